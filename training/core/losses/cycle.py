"""Cycle-consistency loss L_cyc, paper Eq. 3."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CycleLoss(nn.Module):
    """Mean L1 distance between a reconstruction G_T→S(G_S→T(x)) and the original x.

    Shapes: two (N, C, H, W) tensors. Eq. 3 is the sum of this over both directions.
    """

    def forward(self, reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(reconstructed, original)
