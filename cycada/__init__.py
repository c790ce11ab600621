"""CyCADA: cycle-consistent adversarial domain adaptation, from training to Triton serving.

Subpackages live in the repository's top-level folders: ``cycada.training`` (training/),
``cycada.export`` (export/), ``cycada.serving`` (serving/) and ``cycada.clients`` (clients/).
"""

__version__ = "0.1.0"
