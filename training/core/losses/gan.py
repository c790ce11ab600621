"""Image-level adversarial loss L_GAN, paper Eq. 2 (vanilla) or its least-squares form."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class GANLoss(nn.Module):
    """Loss of discriminator outputs against a real/fake target.

    ``vanilla`` is Eq. 2's log-likelihood (binary cross-entropy on logits); ``lsgan`` is the
    least-squares variant used by CycleGAN and the reference code. Input: discriminator output
    of any shape (N, 1, h, w) — one value per patch — averaged over all values.
    """

    def __init__(self, mode: Literal["lsgan", "vanilla"] = "lsgan"):
        super().__init__()
        if mode not in ("lsgan", "vanilla"):
            raise ValueError(f"unknown GAN mode '{mode}' (valid: lsgan, vanilla)")
        self.mode = mode

    def forward(self, prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        target = torch.full_like(prediction, 1.0 if target_is_real else 0.0)
        if self.mode == "lsgan":
            return F.mse_loss(prediction, target)
        return F.binary_cross_entropy_with_logits(prediction, target)
