"""Image preprocessing shared by every stage: uint8 NHWC → float NCHW in [-1, 1], and fitting.

Following the reference, images are only resized or converted grey↔RGB where the network's
input differs from the data (USPS 16x16 → LeNet 28x28, MNIST grey → DTN RGB).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

_LUMA = (0.299, 0.587, 0.114)


def to_unit_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) → float32 (N, C, H, W) in [-1, 1]."""
    tensor = torch.as_tensor(images)
    return tensor.permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (N, C, H, W) in [-1, 1] → uint8 (N, H, W, C)."""
    pixels = images.detach().float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def fit_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    if x.shape[1] == 3 and channels == 1:
        weights = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * weights).sum(dim=1, keepdim=True)
    raise ValueError(f"cannot convert {x.shape[1]} channels to {channels}")


def fit_images(x: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """Fit (N, C, H, W) images to ``channels`` and ``size``x``size``, only where they differ."""
    x = fit_channels(x, channels)
    if x.shape[-2:] != (size, size):
        shrinking = x.shape[-1] > size or x.shape[-2] > size
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking
        )
    return x
