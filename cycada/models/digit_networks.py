"""Digit task networks f_S / f_T: LeNet (1x28x28) and DTN (3x32x32), as in the reference code.

Both expose ``forward(x) -> logits`` and ``forward_with_features(x) -> (features, logits)``.
Inputs in [-1, 1] of any size and channel count are fitted to the network's input (resize and
grey↔RGB) inside ``forward``, only where they differ, so translated images of another size can be
classified directly.
"""

from __future__ import annotations

import torch
from torch import nn

from cycada.models.transforms import fit_images


class DigitTaskNet(nn.Module):
    """Base of the digit task nets; subclasses define ``encode`` and ``classifier``."""

    in_channels: int
    in_size: int
    feature_dim: int
    num_classes: int

    def fit_input(self, x: torch.Tensor) -> torch.Tensor:
        return fit_images(x, self.in_channels, self.in_size)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encode(self.fit_input(x))
        return features, self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x)[1]


def _xavier_init(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class LeNet(DigitTaskNet):
    """conv20 k5 → pool → ReLU → conv50 k5 → Dropout2d → pool → ReLU → fc500 (feature) → fc10."""

    in_channels, in_size, feature_dim = 1, 28, 500

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.num_classes = num_classes
        self.conv = nn.Sequential(
            nn.Conv2d(1, 20, kernel_size=5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(20, 50, kernel_size=5),
            nn.Dropout2d(p=0.5),
            nn.MaxPool2d(2),
            nn.ReLU(),
        )
        self.fc = nn.Linear(800, 500)
        self.classifier = nn.Sequential(nn.ReLU(), nn.Dropout(p=0.5), nn.Linear(500, num_classes))
        _xavier_init(self)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


class DTN(DigitTaskNet):
    """Three strided k5 convs (64, 128, 256) with BN + Dropout2d, fc 4096→512 + BN, fc 512→10."""

    in_channels, in_size, feature_dim = 3, 32, 512

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        channels = [3, 64, 128, 256]
        for c_in, c_out, drop in zip(channels, channels[1:], (0.1, 0.3, 0.5)):
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size=5, stride=2, padding=2),
                nn.BatchNorm2d(c_out),
                nn.Dropout2d(drop),
                nn.ReLU(),
            ]
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(256 * 4 * 4, 512), nn.BatchNorm1d(512))
        self.classifier = nn.Sequential(nn.ReLU(), nn.Dropout(), nn.Linear(512, num_classes))
        _xavier_init(self)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


TASK_NETS: dict[str, type[DigitTaskNet]] = {"lenet": LeNet, "dtn": DTN}


def build_task_net(name: str, num_classes: int = 10) -> DigitTaskNet:
    if name not in TASK_NETS:
        raise ValueError(f"unknown task net '{name}' (valid: {', '.join(sorted(TASK_NETS))})")
    return TASK_NETS[name](num_classes)
