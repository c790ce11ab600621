"""Segmentation networks: DRN-C-26 (paper model B), VGG16-FCN8s (model A) and Fast-SCNN.

All take float images (N, 3, H, W) in [-1, 1] and return class scores (N, K, H, W) at the input
resolution. ``score_maps`` returns the coarse scores before upsampling (for the feature-level
discriminator). Module names follow the public reference implementations (fyu/drn, torchvision
VGG16) so ImageNet-initialised weights in those layouts load by name (:func:`load_backbone`).

Fast-SCNN (Poudel et al., 2019) is the light real-time model: 1.1 M parameters, a shared
learning-to-downsample stem at 1/8 resolution, a global context branch at 1/32 with pyramid-style
context pooling (size-agnostic for ONNX, see :class:`ContextPooling`) and a cheap fusion. It is
designed for low-compute devices, which makes it the CPU/edge default here (its ONNX Runtime
speed: ``python -m cycada.benchmarks.segmenters``).
"""

from __future__ import annotations

import abc
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cycada.errors import CheckpointError

# ImageNet statistics: backbones pretrained on ImageNet expect this normalisation
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Segmenter(nn.Module, abc.ABC):
    """Base: maps [-1, 1] inputs to ImageNet normalisation, upsamples scores to the input."""

    num_classes: int
    output_stride: int

    def __init__(self) -> None:
        super().__init__()
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        # x in [-1, 1] → (x + 1) / 2 in [0, 1] → (· - mean) / std
        self.register_buffer("input_scale", 0.5 / std, persistent=False)
        self.register_buffer("input_shift", (0.5 - mean) / std, persistent=False)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.input_scale + self.input_shift

    def pixel_normalisation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), each (3,): uint8 pixel values straight to the normalised input of
        :meth:`normalised_score_maps`, one affine where [-1, 1] and ``normalise`` take two
        (the serving graphs' saving of full-frame passes)."""
        return (self.input_scale / 127.5).flatten(), (self.input_shift - self.input_scale).flatten()

    def score_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores at the network's output stride (before upsampling)."""
        return self.normalised_score_maps(self.normalise(x))

    @abc.abstractmethod
    def normalised_score_maps(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`score_maps` of an input already normalised (ImageNet statistics)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.score_maps(x)
        return F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)


# --- DRN-C-26 ------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: tuple[int, int] = (1, 1),
        residual: bool = True,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(
            inplanes, planes, 3, stride, padding=dilation[0], dilation=dilation[0], bias=False
        )
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, padding=dilation[1], dilation=dilation[1], bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class DRNC26(Segmenter):
    """DRN-C-26: blocks [1, 1, 2, 2, 2, 2, 1, 1], channels 16..512, output stride 8."""

    output_stride = 8

    def __init__(self, num_classes: int = 19):
        super().__init__()
        self.num_classes = num_classes
        channels = (16, 32, 64, 128, 256, 512, 512, 512)
        self.inplanes = channels[0]
        self.conv1 = nn.Conv2d(3, channels[0], 7, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(channels[0], 1)
        self.layer2 = self._make_layer(channels[1], 1, stride=2)
        self.layer3 = self._make_layer(channels[2], 2, stride=2)
        self.layer4 = self._make_layer(channels[3], 2, stride=2)
        self.layer5 = self._make_layer(channels[4], 2, dilation=2, new_level=False)
        self.layer6 = self._make_layer(channels[5], 2, dilation=4, new_level=False)
        # DRN-C: the last two levels have no residual connection (removes gridding artefacts)
        self.layer7 = self._make_layer(channels[6], 1, dilation=2, new_level=False, residual=False)
        self.layer8 = self._make_layer(channels[7], 1, dilation=1, new_level=False, residual=False)
        self.seg = nn.Conv2d(channels[7], num_classes, 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.seg.weight, 0, 0.01)
        nn.init.zeros_(self.seg.bias)

    def _make_layer(
        self,
        planes: int,
        blocks: int,
        stride: int = 1,
        dilation: int = 1,
        new_level: bool = True,
        residual: bool = True,
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        first = (1, 1) if dilation == 1 else (dilation // 2 if new_level else dilation, dilation)
        layers = [BasicBlock(self.inplanes, planes, stride, downsample, first, residual)]
        self.inplanes = planes
        layers += [
            BasicBlock(planes, planes, dilation=(dilation, dilation), residual=residual)
            for _ in range(1, blocks)
        ]
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 1/8 feature map of a normalised input."""
        x = self.relu(self.bn1(self.conv1(x)))
        for layer in (
            self.layer1,
            self.layer2,
            self.layer3,
            self.layer4,
            self.layer5,
            self.layer6,
            self.layer7,
            self.layer8,
        ):
            x = layer(x)
        return x

    def normalised_score_maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.seg(self.features(x))


# --- VGG16-FCN8s -----------------------------------------------------------------------------
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class FCN8s(Segmenter):
    """VGG16 (torchvision layout ``features.N``), fc6/fc7 as convolutions, skips from pool3/4."""

    output_stride = 8

    def __init__(self, num_classes: int = 19):
        super().__init__()
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        channels = 3
        for item in _VGG16:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers)
        self.fc6 = nn.Conv2d(512, 4096, 7, padding=3)
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.drop = nn.Dropout2d(0.5)
        self.score_fr = nn.Conv2d(4096, num_classes, 1)
        self.score_pool4 = nn.Conv2d(512, num_classes, 1)
        self.score_pool3 = nn.Conv2d(256, num_classes, 1)
        for head in (self.score_fr, self.score_pool4, self.score_pool3):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def normalised_score_maps(self, x: torch.Tensor) -> torch.Tensor:
        pool3 = self.features[:17](x)  # after the third max-pool: 1/8
        pool4 = self.features[17:24](pool3)  # 1/16
        pool5 = self.features[24:](pool4)  # 1/32
        h = self.drop(F.relu(self.fc6(pool5), inplace=True))
        h = self.drop(F.relu(self.fc7(h), inplace=True))
        score = self.score_fr(h)
        score = F.interpolate(score, size=pool4.shape[-2:], mode="bilinear", align_corners=False)
        score = score + self.score_pool4(pool4)
        score = F.interpolate(score, size=pool3.shape[-2:], mode="bilinear", align_corners=False)
        return score + self.score_pool3(pool3)


# --- Fast-SCNN ---------------------------------------------------------------------------------
def _conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _dsconv(cin: int, cout: int, stride: int = 1):
    return nn.Sequential(
        _conv_bn_relu(cin, cin, 3, stride, groups=cin),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int = 6):
        super().__init__()
        hidden = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            _conv_bn_relu(cin, hidden, 1),
            _conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class ContextPooling(nn.Module):
    """Pyramid-pooling-like global context that exports to ONNX for any input size.

    Fast-SCNN's pyramid pooling uses adaptive pooling to 1, 2, 3 and 6 bins, which ONNX cannot
    express for input sizes those bins do not divide. Here the global bin is a mean over the map
    and the finer bins are stride-1 average pools of growing windows: same role (context at
    several scales), any size, one graph for every resolution.
    """

    def __init__(self, channels: int, windows: tuple[int, ...] = (3, 5, 9)):
        super().__init__()
        self.windows = windows
        self.reduce = nn.ModuleList(
            _conv_bn_relu(channels, channels // 4, 1) for _ in range(len(windows) + 1)
        )
        self.project = _conv_bn_relu(channels * 2, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [self.reduce[0](x.mean(dim=(2, 3), keepdim=True)).expand(-1, -1, *x.shape[-2:])]
        for window, conv in zip(self.windows, self.reduce[1:], strict=True):
            pooled.append(conv(F.avg_pool2d(x, window, 1, window // 2, count_include_pad=False)))
        return self.project(torch.cat([x, *pooled], dim=1))


class FastSCNN(Segmenter):
    """Learning to downsample (1/8) → global features (1/32, PPM) → fusion → classifier."""

    output_stride = 8

    def __init__(self, num_classes: int = 19):
        super().__init__()
        self.num_classes = num_classes
        self.downsample = nn.Sequential(
            _conv_bn_relu(3, 32, 3, 2), _dsconv(32, 48, 2), _dsconv(48, 64, 2)
        )
        blocks: list[nn.Module] = []
        for cin, cout, stride in ((64, 64, 2), (64, 96, 2), (96, 128, 1)):
            blocks += [InvertedResidual(cin, cout, stride)]
            blocks += [InvertedResidual(cout, cout, 1) for _ in range(2)]
        self.global_features = nn.Sequential(*blocks, ContextPooling(128))
        self.fuse_low = nn.Sequential(nn.Conv2d(64, 128, 1, bias=False), nn.BatchNorm2d(128))
        self.fuse_high = nn.Sequential(
            _conv_bn_relu(128, 128, 3, groups=128),
            nn.Conv2d(128, 128, 1, bias=False),
            nn.BatchNorm2d(128),
        )
        self.classifier = nn.Sequential(
            _dsconv(128, 128), _dsconv(128, 128), nn.Dropout(0.1), nn.Conv2d(128, num_classes, 1)
        )

    def normalised_score_maps(self, x: torch.Tensor) -> torch.Tensor:
        low = self.downsample(x)
        high = self.global_features(low)
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
        fused = F.relu(self.fuse_low(low) + self.fuse_high(high), inplace=True)
        return self.classifier(fused)


SEGMENTERS: dict[str, type[Segmenter]] = {"drn26": DRNC26, "fcn8s": FCN8s, "fastscnn": FastSCNN}


def build_segmenter(name: str, num_classes: int) -> Segmenter:
    if name not in SEGMENTERS:
        raise ValueError(f"unknown segmenter '{name}' (valid: {', '.join(sorted(SEGMENTERS))})")
    return SEGMENTERS[name](num_classes)


def load_backbone(model: Segmenter, path: str | Path) -> list[str]:
    """Load ImageNet weights from a local file (fyu/drn or torchvision VGG16 layouts).

    Accepts a plain state dict, or one nested under ``state_dict``/``model``, with optional
    ``module.`` prefixes; classification heads are skipped and VGG's ``classifier.0/3``
    (fc6/fc7) are reshaped into convolutions. Returns the names of the loaded tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"backbone weights {path} do not exist")
    try:
        if path.suffix == ".safetensors":
            # only when backbone weights are given
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read backbone weights {path} ({exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if isinstance(model, FCN8s):
        renames = {
            "classifier.0.weight": "fc6.weight",
            "classifier.0.bias": "fc6.bias",
            "classifier.3.weight": "fc7.weight",
            "classifier.3.bias": "fc7.bias",
        }
        state = {renames.get(k, k): v for k, v in state.items()}
    own = model.state_dict()
    loaded = []
    for key, value in state.items():
        if key not in own or key.startswith(("seg.", "score_", "classifier", "fc.")):
            continue
        if value.numel() != own[key].numel():
            raise CheckpointError(
                f"backbone weights {path}: '{key}' has shape {tuple(value.shape)}, the network "
                f"expects {tuple(own[key].shape)}"
            )
        own[key] = value.reshape(own[key].shape)
        loaded.append(key)
    if not loaded:
        raise CheckpointError(f"backbone weights {path} hold no tensor of {type(model).__name__}")
    model.load_state_dict(own)
    return loaded
