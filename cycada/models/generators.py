"""Image-to-image generators G_S→T and G_T→S.

* :class:`ResnetGenerator`: CycleGAN's ResNet-N generator (reflection padding, instance norm,
  two stride-2 convolutions, N residual blocks, two transposed convolutions, tanh).
* :func:`digit_generator`: the digit generator of the paper's Figure 7: convolutions, two
  residual blocks, deconvolutions; a ResNet generator with one down/up-sampling step.
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, norm: type[nn.Module]):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3),
            norm(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3),
            norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """conv7 → ``n_down`` stride-2 convs → ``n_blocks`` residual blocks → deconvs → conv7 → tanh.

    Input height and width must be multiples of ``2 ** n_down`` (``stride``).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        base: int = 64,
        n_blocks: int = 9,
        n_down: int = 2,
        norm: str = "instance",
    ):
        super().__init__()
        norm_layer = {"instance": nn.InstanceNorm2d, "batch": nn.BatchNorm2d}[norm]
        self.stride = 2**n_down
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, base, kernel_size=7),
            norm_layer(base),
            nn.ReLU(inplace=True),
        ]
        channels = base
        for _ in range(n_down):
            layers += [
                nn.Conv2d(channels, channels * 2, kernel_size=3, stride=2, padding=1),
                norm_layer(channels * 2),
                nn.ReLU(inplace=True),
            ]
            channels *= 2
        layers += [ResidualBlock(channels, norm_layer) for _ in range(n_blocks)]
        for _ in range(n_down):
            layers += [
                nn.ConvTranspose2d(
                    channels, channels // 2, kernel_size=3, stride=2, padding=1, output_padding=1
                ),
                norm_layer(channels // 2),
                nn.ReLU(inplace=True),
            ]
            channels //= 2
        layers += [
            nn.ReflectionPad2d(3),
            nn.Conv2d(channels, out_channels, kernel_size=7),
            nn.Tanh(),
        ]
        self.model = nn.Sequential(*layers)
        for layer in self.modules():
            if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(layer.weight, 0.0, 0.02)
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def digit_generator(in_channels: int, out_channels: int, base: int = 64) -> ResnetGenerator:
    """Figure 7 (right): convolutions, two residual blocks, deconvolutions (32x32 digits)."""
    return ResnetGenerator(in_channels, out_channels, base=base, n_blocks=2, n_down=1, norm="batch")


def build_generator(
    name: str, in_channels: int, out_channels: int, base: int = 64
) -> ResnetGenerator:
    if name == "digit":
        return digit_generator(in_channels, out_channels, base)
    blocks = {"resnet6": 6, "resnet9": 9}
    if name not in blocks:
        raise ValueError(f"unknown generator '{name}' (valid: digit, {', '.join(blocks)})")
    return ResnetGenerator(in_channels, out_channels, base=base, n_blocks=blocks[name])
