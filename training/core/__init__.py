"""The task-independent core of CyCADA: losses, generators and discriminators, the pixel-adaptation
step, the image pool, run logging, checkpoints and stage storage, distributed helpers."""
