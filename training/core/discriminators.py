"""Discriminators: image (D_S, D_T) and feature (D_feat).

* :class:`DigitImageDiscriminator`: Figure 7 (mid right): six convolutions ending in one value
  per output pixel.
* :class:`PatchDiscriminator`: CycleGAN's 70x70 PatchGAN (three stride-2 layers).
* :class:`FeatureDiscriminator`: Figure 7 (mid left): three fully connected layers, 2-way
  output; fed class scores (reference code) or the task net's features (paper figure).
* :class:`ScoreMapDiscriminator`: segmentation's D_feat, 1x1 convolutions per score-map pixel.
"""

from __future__ import annotations

import torch
from torch import nn


def _init_gan(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, 0.0, 0.02)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class DigitImageDiscriminator(nn.Module):
    """Six 3x3 convolutions (64, 128, 256, 256, 512 channels, then 1), LeakyReLU; 32→8 px map.

    ``base`` scales the widths (64 is the figure's).
    """

    def __init__(self, in_channels: int, base: int = 64):
        super().__init__()
        widths = [base, base * 2, base * 4, base * 4, base * 8]
        strides = [2, 2, 1, 1, 1]
        layers: list[nn.Module] = []
        channels = in_channels
        for index, (width, stride) in enumerate(zip(widths, strides)):
            layers.append(nn.Conv2d(channels, width, kernel_size=3, stride=stride, padding=1))
            if index > 0:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            channels = width
        layers.append(nn.Conv2d(channels, 1, kernel_size=3, padding=1))
        self.model = nn.Sequential(*layers)
        _init_gan(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PatchDiscriminator(nn.Module):
    """CycleGAN's PatchGAN: with ``n_layers=3`` each output value sees a 70x70 patch."""

    def __init__(self, in_channels: int, base: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, base, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        channels = base
        for index in range(1, n_layers + 1):
            width = base * min(2**index, 8)
            stride = 2 if index < n_layers else 1
            layers += [
                nn.Conv2d(channels, width, kernel_size=4, stride=stride, padding=1, bias=False),
                nn.InstanceNorm2d(width),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            channels = width
        layers.append(nn.Conv2d(channels, 1, kernel_size=4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)
        _init_gan(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class FeatureDiscriminator(nn.Module):
    """Linear(in→500) → ReLU → Linear(500→500) → ReLU → Linear(500→2)."""

    def __init__(self, in_features: int, hidden: int = 500):
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def build_image_discriminator(name: str, in_channels: int, base: int = 64) -> nn.Module:
    if name == "digit":
        return DigitImageDiscriminator(in_channels, base)
    if name == "patch":
        return PatchDiscriminator(in_channels, base)
    raise ValueError(f"unknown image discriminator '{name}' (valid: digit, patch)")


class ScoreMapDiscriminator(nn.Module):
    """Segmentation D_feat (appendix A.1.2): 1x1 convolutions over f_T's class-score map,
    19→512→256→2, a source/target decision per score-map pixel."""

    def __init__(self, num_classes: int, channels: tuple[int, ...] = (512, 256)):
        super().__init__()
        layers: list[nn.Module] = []
        width = num_classes
        for hidden in channels:
            layers += [nn.Conv2d(width, hidden, 1), nn.ReLU(inplace=True)]
            width = hidden
        layers.append(nn.Conv2d(width, 2, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return self.model(scores)
