"""CyCADA on semantic segmentation (paper Tables 4-6): command, config, data, label spaces,
scenes, videos, networks, stages, pipeline, metrics and evaluation."""
