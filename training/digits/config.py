"""Configuration of a digits CyCADA run. Defaults are the paper's appendix A.1.1 values.

Symbols of the paper, mapped once: f_S = ``task_src``, f_T = ``task_tgt``, G_S→T =
``gen_src2tgt``, G_T→S = ``gen_tgt2src``, D_S = ``disc_src``, D_T = ``disc_tgt``, D_feat =
``disc_feat``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from cycada import configs
from cycada.training.core.pixel_config import PixelConfig
from cycada.training.core.presets import PRESET_DIR

# every stage a digits run can have, in order (the pipeline's table; joint replaces pixel,
# target and feature with --mode joint)
STAGES = ("source", "pixel", "target", "feature", "joint")


@dataclass(frozen=True)
class DigitsDataConfig:
    source: str = "usps"
    target: str = "mnist"
    data_root: str = "data"
    source_split: str = "train"  # labelled source used for training
    target_split: str = "train"  # unlabelled target used for adaptation
    eval_split: str = "test"  # labelled split of each domain used for evaluation
    eval_set: str = ""  # a labelled domain to evaluate the target side on ("" = the target)
    synthetic_size: int = 25000  # images per split of the synthetic domain
    max_samples: int = 0  # cap every split (0 = all); for tests and smoke runs
    label_free_samples: int = 1000  # unlabelled targets: images held out for label-free signals


@dataclass(frozen=True)
class SourceStageConfig:
    """Stage 1: f_S on labelled source, Eq. 1 (Adam 1e-4, batch 128, 100 epochs)."""

    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-4


@dataclass(frozen=True)
class PixelStageConfig(PixelConfig):
    """Stage 2 on digits: CycleGAN at 32x32 with the digit networks, batch 100, 50 epochs."""

    image_size: int = 32


@dataclass(frozen=True)
class TargetStageConfig:
    """Stage 3: f_T (initialised from f_S) trained on G_S→T(X_S) with source labels."""

    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-4


@dataclass(frozen=True)
class FeatureStageConfig:
    """Stage 4: feature-level GAN on f_T, Eq. 5 (Adam 1e-5, up to 200 epochs, 60% gate)."""

    enabled: bool = True
    max_epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-5
    disc_lr: float = 0.0  # 0 = same as lr
    beta1: float = 0.9  # the reference's ADDA step: Adam betas (0.9, 0.999)
    beta2: float = 0.999
    # train: f_T and the frozen source-side copy both in train mode (dropout, batch statistics),
    # as the reference runs them, so D_feat cannot tell the domains apart by dropout noise;
    # eval: both in eval mode; asymmetric: copy in eval, f_T in train (kept for comparison)
    network_mode: Literal["train", "eval", "asymmetric"] = "train"
    disc_input: Literal["scores", "features"] = "scores"
    gate_threshold: float = 0.6
    gate_window: int = 1  # batches over which the discriminator accuracy is averaged
    generator_weight: float = 1.0  # appendix: generator and discriminator losses weighted equally
    task_weight: float = 1.0  # L_task(f_T, G(X_S), Y_S) of Eq. 6; 0 = pure feature GAN
    # the frozen network whose representation of (translated) source D_feat learns as "source":
    # target_init: f_T as the target stage left it (the reference code's ADDA step);
    # source: f_S itself, Eq. 5's f_S(G_S→T(X_S)) read literally. Same network without pixel.
    reference: Literal["target_init", "source"] = "target_init"


@dataclass(frozen=True)
class DigitsRunConfig:
    task: Literal["digits"] = "digits"
    model: Literal["auto", "lenet", "dtn"] = "auto"
    # staged: stages 2-4 one after another; joint: one loop on Eq. 7's single objective (f_T's
    # losses reach G_S→T); alternating: one loop, pixel step then stage-4 step, G detached
    mode: Literal["staged", "joint", "alternating"] = "staged"
    joint_epochs: int = 20  # joint/alternating: epochs of the single loop running stages 2-4
    joint_generator_weight: float = 1.0  # joint: scale of f_T's gradients reaching G_S→T
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 1000
    data: DigitsDataConfig = field(default_factory=DigitsDataConfig)
    source: SourceStageConfig = field(default_factory=SourceStageConfig)
    pixel: PixelStageConfig = field(default_factory=PixelStageConfig)
    target: TargetStageConfig = field(default_factory=TargetStageConfig)
    feature: FeatureStageConfig = field(default_factory=FeatureStageConfig)


def resolve_digits_config(
    preset: str = "paper",
    config_file: str | None = None,
    sets: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> DigitsRunConfig:
    """Defaults ← ``defaults`` ← preset YAML ← user YAML ← explicit overrides ← ``--set``."""
    return configs.resolve(
        DigitsRunConfig, PRESET_DIR, "digits", preset, config_file, sets, overrides, defaults
    )
