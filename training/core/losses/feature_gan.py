"""Feature-level adversarial loss L_GAN(f_T, D_feat, ...), paper Eq. 5."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SOURCE_DOMAIN = 1
TARGET_DOMAIN = 0


class FeatureGANLoss(nn.Module):
    """2-way cross-entropy of D_feat's outputs against domain labels, as in the reference code.

    Input: discriminator outputs (N, 2) for classification features/scores, or (N, 2, H, W) for
    segmentation score maps (pixel-wise). ``domain`` is :data:`SOURCE_DOMAIN` or
    :data:`TARGET_DOMAIN`. The discriminator trains with the true domain; f_T trains on target
    outputs with the inverted label (``domain=SOURCE_DOMAIN``).
    """

    def forward(self, outputs: torch.Tensor, domain: int) -> torch.Tensor:
        shape = (outputs.shape[0], *outputs.shape[2:])
        labels = torch.full(shape, domain, dtype=torch.long, device=outputs.device)
        return F.cross_entropy(outputs, labels)


def domain_accuracy(source_outputs: torch.Tensor, target_outputs: torch.Tensor) -> float:
    """Fraction of source and target outputs D_feat assigns to their true domain."""
    correct = (source_outputs.argmax(1) == SOURCE_DOMAIN).float().sum()
    correct = correct + (target_outputs.argmax(1) == TARGET_DOMAIN).float().sum()
    total = source_outputs.argmax(1).numel() + target_outputs.argmax(1).numel()
    return float(correct / total)
