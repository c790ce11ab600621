"""The CyCADA losses, one module each (paper Eqs. 1-5)."""

from cycada.training.losses.cycle import CycleLoss
from cycada.training.losses.feature_gan import FeatureGANLoss, domain_accuracy
from cycada.training.losses.gan import GANLoss
from cycada.training.losses.semantic import SemanticConsistencyLoss
from cycada.training.losses.task import TaskLoss

__all__ = [
    "CycleLoss",
    "FeatureGANLoss",
    "GANLoss",
    "SemanticConsistencyLoss",
    "TaskLoss",
    "domain_accuracy",
]
