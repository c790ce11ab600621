"""Rebuild a run's config from the copy stored inside one of its checkpoints."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from cycada import configs
from cycada.checkpoint import read_header
from cycada.training.segmentation.config import SegRunConfig


def seg_config(checkpoint: Path) -> SegRunConfig:
    stored, _ = read_header(checkpoint)
    return configs.build(SegRunConfig, stored)


def replace_data(config: SegRunConfig, data: dict[str, Any], max_samples: int) -> SegRunConfig:
    new_data = dataclasses.replace(
        config.data,
        **{"source_root": "", "target_root": "", "eval_set": "", "eval_root": "", **data},
        max_samples=max_samples,
    )
    return dataclasses.replace(config, data=new_data, eval_max_samples=max_samples, device="auto")
