"""The pixel stage's settings, shared by both tasks: CycleGAN's networks, losses and optimizer.

Each task subclasses :class:`PixelConfig` with its own defaults (the paper's appendix A.1) and
the fields only it has: the digits' image size, segmentation's crop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class PixelConfig:
    """Stage 2, Eqs. 2-4: CycleGAN (Adam 2e-4, betas 0.5/0.999, pool 50) + semantic loss."""

    enabled: bool = True
    epochs: int = 50
    max_steps: int = 0  # stop after this many steps (0 = run all epochs)
    batch_size: int = 100
    lr: float = 2e-4
    # CycleGAN's schedule: constant, then linear decay to 0 from this fraction of the steps on
    # (its 100 + 100 epochs = 0.5); 1.0 keeps the rate constant
    lr_decay_start: float = 1.0
    beta1: float = 0.5
    beta2: float = 0.999
    generator: Literal["digit", "resnet6", "resnet9"] = "digit"
    generator_width: int = 64  # channels of the generator's first layer (CycleGAN: 64)
    discriminator: Literal["digit", "patch"] = "digit"
    discriminator_width: int = 64
    gan_mode: Literal["lsgan", "vanilla"] = "lsgan"
    lambda_gan: float = 1.0
    lambda_cycle: float = 1.0
    lambda_semantic: float = 1.0
    # which classifier reads the translations for L_sem: "source", the frozen f_S (Eq. 4);
    # "alongside", the reference code's deviation: a classifier trained from scratch on labelled
    # source beside the generators, G_S→T's term against the true labels, both terms off while
    # its loss is above semantic_gate_loss (digits only: it needs labelled source batches)
    semantic_model: Literal["source", "alongside"] = "source"
    semantic_gate_loss: float = 1.0
    # extra factor on G_S→T's GAN term (the reference code's digit CycleGAN: 2)
    forward_gan_weight: float = 1.0
    # an absolute weight, not CycleGAN's factor on the cycle weight: its --lambda_identity 0.5
    # beside cycle 10 is 5 here
    lambda_identity: float = 0.0
    pool_size: int = 50
    sample_every: int = 200  # steps between image grids
