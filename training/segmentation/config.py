"""Configuration of a segmentation CyCADA run. Defaults are the paper's appendix A.1.2 values."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from cycada import configs
from cycada.errors import ConfigError
from cycada.training.core.pixel_config import PixelConfig
from cycada.training.core.presets import PRESET_DIR

# the data sets a run can name (the readers are in data.py, which imports torch: the command
# line reads these names without it)
SEG_DATASETS = [
    "camvid",
    "cityscapes",
    "folder:IMAGES:LABELS[:MAPPING]",
    "gta5",
    "synthia",
    "synthia-seqs:SEASON",
]
UNLABELLED_DATASETS = ["folder:IMAGES", "video:PATH"]

SEG_STAGES = ("source", "pixel", "translate", "target", "feature")
# segmenter training iterations of the paper's schedules (appendix A.1.2 and reference code)
PAPER_ITERATIONS = {"drn26": 115000, "fcn8s": 100000}


@dataclass(frozen=True)
class SegDataConfig:
    source: str = "gta5"
    target: str = "cityscapes"
    data_root: str = "data"
    source_root: str = ""  # where the source domain lives, when not under data_root
    target_root: str = ""  # where the target domain lives, when not under data_root
    label_space: Literal["cityscapes19", "synthia13"] = "cityscapes19"
    source_split: str = "train"
    target_split: str = "train"  # unlabelled target images
    eval_split: str = "val"  # labelled split for evaluation (of eval_set, else of the target)
    eval_set: str = ""  # a labelled domain to evaluate on; "" = the target's own eval split
    eval_root: str = ""  # where eval_set lives, when not under data_root
    resize_width: int = 1024  # every image is resized to this width, keeping its aspect ratio
    # cap: a training crop larger than the (resized) images is cut down to their size, so no
    # crop is mostly zero/ignore padding (1024-wide GTA5 frames are 563 high, under the 600 and
    # 768 crops); pad: the crop keeps its size and the image is padded (the earlier behaviour)
    crop_mode: Literal["cap", "pad"] = "cap"
    max_samples: int = 0  # cap every split (0 = all)
    workers: int = 2
    # video:PATH targets: frames per second of video kept (.inf = every frame), a cap over
    # all videos (0 = none), the near-duplicate threshold (mean grey difference, 0 = off)
    target_fps: float = 1.0
    target_max_frames: int = 0
    target_dedup: float = 1.5
    # unlabelled targets: target images held out of training for the label-free signals
    label_free_frames: int = 100

    def __post_init__(self) -> None:
        if not self.target_fps > 0:
            raise ConfigError(
                f"data.target_fps (--target-fps) is {self.target_fps}; expected frames per "
                "second > 0 (e.g. 1, or .inf / 'all' for every frame)"
            )
        for key in ("target_max_frames", "label_free_frames", "max_samples"):
            if getattr(self, key) < 0:
                raise ConfigError(f"data.{key} is {getattr(self, key)}; expected >= 0")
        if self.target_dedup < 0:
            raise ConfigError(f"data.target_dedup is {self.target_dedup}; expected >= 0 (0 = off)")


@dataclass(frozen=True)
class SegSupervisedConfig:
    """A segmenter trained on labelled images: f_S on the source, then f_T (initialised from
    f_S) on the translated source with the same recipe. Paper: SGD lr 1e-3, momentum 0.9,
    crop 600, batch 8 (DRN: 115k iterations)."""

    iterations: int = 0  # 0 = the paper's schedule of the model: DRN-C-26 115k, FCN8s 100k
    batch_size: int = 8
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    crop: int = 600
    flip: bool = True
    poly_power: float = 0.0  # 0 = the paper's fixed learning rate; 0.9 = "poly" decay


@dataclass(frozen=True)
class SegPixelConfig(PixelConfig):
    """CycleGAN at 400x400 crops of width-1024 images, 20 epochs; + semantic loss (made to fit)."""

    epochs: int = 20
    batch_size: int = 1
    lr_decay_start: float = 0.5  # CycleGAN's 100 + 100 epochs
    generator: Literal["digit", "resnet6", "resnet9"] = "resnet9"
    discriminator: Literal["digit", "patch"] = "patch"
    lambda_cycle: float = 10.0  # CycleGAN's default, which the paper followed
    lambda_semantic: float = 1.0  # the paper dropped it for memory; mixed precision makes it fit
    sample_every: int = 500
    crop: int = 400


@dataclass(frozen=True)
class SegFeatureConfig:
    """Score-map discriminator 19→512→256→2; SGD momentum 0.99, lr 1e-5; G loss ×0.1; 60% gate."""

    enabled: bool = True
    iterations: int = 20000
    lr: float = 1e-5
    disc_lr: float = 0.0  # D_feat's learning rate; 0 = lr (the paper: one rate for both)
    momentum: float = 0.99
    weight_decay: float = 5e-4
    crop: int = 768
    generator_weight: float = 0.1
    task_weight: float = 1.0  # L_task on translated source beside the feature GAN (Eq. 6)
    gate_threshold: float = 0.6
    gate_window: int = 100
    discriminator_channels: tuple[int, ...] = (512, 256)


@dataclass(frozen=True)
class SegRunConfig:
    task: Literal["seg"] = "seg"
    model: Literal["drn26", "fcn8s", "fastscnn"] = "drn26"
    backbone_weights: str = ""  # local ImageNet weights (fyu/drn or torchvision VGG16 layout)
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # mixed precision on GPU (ignored on CPU)
    channels_last: bool = True  # on GPU
    eval_max_samples: int = 0  # cap the evaluation split (0 = all)
    eval_panels: int = 4  # Figure 5-like panels written per evaluation
    checkpoint_every: int = 200  # steps between resume states (changes no weights)
    data: SegDataConfig = field(default_factory=SegDataConfig)
    source: SegSupervisedConfig = field(default_factory=SegSupervisedConfig)
    pixel: SegPixelConfig = field(default_factory=SegPixelConfig)
    target: SegSupervisedConfig = field(default_factory=SegSupervisedConfig)
    feature: SegFeatureConfig = field(default_factory=SegFeatureConfig)

    def __post_init__(self) -> None:
        if self.checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every is {self.checkpoint_every}; expected >= 1")
        if not 0.0 <= self.pixel.lr_decay_start <= 1.0:
            raise ConfigError(
                f"pixel.lr_decay_start is {self.pixel.lr_decay_start}; expected a fraction "
                "in [0, 1]"
            )
        if self.pixel.semantic_model != "source":
            raise ConfigError(
                f"pixel.semantic_model is '{self.pixel.semantic_model}'; segmentation supports "
                "only 'source' (the frozen source segmenter of Eq. 4)"
            )
        # 0 iterations = the paper's schedule of this model; the resolved number is recorded
        for stage in ("source", "target"):
            cfg = getattr(self, stage)
            if cfg.iterations < 0:
                raise ConfigError(f"{stage}.iterations is {cfg.iterations}; expected >= 0")
            if cfg.iterations == 0:
                schedule = PAPER_ITERATIONS.get(self.model, PAPER_ITERATIONS["drn26"])
                object.__setattr__(self, stage, replace(cfg, iterations=schedule))


def resolve_seg_config(
    preset: str = "paper",
    config_file: str | None = None,
    sets: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> SegRunConfig:
    """Defaults ← ``defaults`` ← preset YAML ← user YAML ← explicit overrides ← ``--set``."""
    return configs.resolve(
        SegRunConfig, PRESET_DIR, "seg", preset, config_file, sets, overrides, defaults
    )
