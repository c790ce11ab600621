"""Stage 3: f_T, initialised from f_S, trained on G_S→T(X_S) with the source labels."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from cycada.atomic import write_atomic
from cycada.models.digit_networks import DigitTaskNet
from cycada.models.transforms import to_uint8
from cycada.training.core.pixel_adaptation import translate
from cycada.training.digits.run import DigitsRun
from cycada.training.digits.stages.pixel import pixel_domains
from cycada.training.digits.stages.source import train_supervised


def translated_source(run: DigitsRun, gen_src2tgt: nn.Module) -> torch.Tensor:
    """The labelled source training set rewritten into the target style by G_S→T."""
    x_src, _ = pixel_domains(run)
    return translate(gen_src2tgt, x_src, run.device)


def save_translated(run: DigitsRun, images: torch.Tensor) -> None:
    """Keep the translated source set (uint8 images + labels) as an artifact of the run."""
    path = run.out_dir / "translated" / "source_train.npz"
    labels = run.source_train.labels.numpy()

    def writer(tmp):
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, images=to_uint8(images), labels=labels)

    write_atomic(path, writer)


def train_target(run: DigitsRun, task_src: DigitTaskNet, gen_src2tgt: nn.Module) -> DigitTaskNet:
    cfg = run.config.target
    generator = run.generator("target")
    images = translated_source(run, gen_src2tgt)
    save_translated(run, images)
    task_tgt = copy.deepcopy(task_src)
    return train_supervised(
        run,
        "target",
        generator,
        task_tgt,
        images,
        run.source_train.labels,
        cfg.epochs,
        cfg.batch_size,
        cfg.lr,
    )
