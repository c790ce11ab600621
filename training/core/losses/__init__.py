"""The CyCADA losses, one module each (paper Eqs. 1-5)."""

from cycada.training.core.losses.cycle import CycleLoss
from cycada.training.core.losses.feature_gan import FeatureGANLoss, domain_accuracy
from cycada.training.core.losses.gan import GANLoss
from cycada.training.core.losses.semantic import AlongsideSemanticLoss, SemanticConsistencyLoss
from cycada.training.core.losses.task import TaskLoss

__all__ = [
    "AlongsideSemanticLoss",
    "CycleLoss",
    "FeatureGANLoss",
    "GANLoss",
    "SemanticConsistencyLoss",
    "TaskLoss",
    "domain_accuracy",
]
