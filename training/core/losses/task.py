"""Task loss L_task, paper Eq. 1."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TaskLoss(nn.Module):
    """Cross-entropy of class scores against labels (Eq. 1).

    Shapes: logits (N, K) with labels (N,) for classification, or (N, K, H, W) with (N, H, W)
    for segmentation; labels equal to ``ignore_index`` do not count.
    """

    def __init__(self, ignore_index: int = 255):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, ignore_index=self.ignore_index)
