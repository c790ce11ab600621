"""Where a run keeps its stages: finished checkpoints and resume states under ``OUT/checkpoints``.

Each finished checkpoint carries the fingerprint of the configs its stage depends on, so a run
folder never silently mixes stages trained with different settings.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cycada import configs
from cycada.checkpoint import load_modules, read_header, save_modules
from cycada.errors import CheckpointError
from cycada.training.stages.resume import StageResume


class StageStore(abc.ABC):
    """Base of the run contexts; subclasses define ``stage_fingerprint`` and ``checkpoint_meta``."""

    out_dir: Path
    config: Any

    @abc.abstractmethod
    def stage_fingerprint(self, stage: str) -> str:
        """Hash of the configs the result of ``stage`` depends on."""

    @abc.abstractmethod
    def checkpoint_meta(self) -> dict[str, Any]:
        """What export and serving need to rebuild the networks (task, model, classes...)."""

    def checkpoint_path(self, stage: str) -> Path:
        return self.out_dir / "checkpoints" / f"{stage}.safetensors"

    def resume_path(self, stage: str) -> Path:
        return self.out_dir / "checkpoints" / f"{stage}.resume.pt"

    def stage_resume(
        self,
        stage: str,
        modules: dict[str, nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        generator: torch.Generator,
    ) -> StageResume:
        """The resume file of ``stage``, bound to this config's fingerprint."""
        return StageResume(
            self.resume_path(stage), modules, optimizers, generator, self.stage_fingerprint(stage)
        )

    def has_checkpoint(self, stage: str) -> bool:
        """True when a finished checkpoint of ``stage`` made with this config exists."""
        path = self.checkpoint_path(stage)
        if not path.exists():
            return False
        _, meta = read_header(path)
        if meta.get("fingerprint") != self.stage_fingerprint(stage):
            raise CheckpointError(
                f"{path} was made with a different config; use a new --out, or --restart to "
                f"train '{stage}' and later stages again"
            )
        return True

    def save_stage(
        self, stage: str, modules: dict[str, nn.Module], extra: dict | None = None
    ) -> Path:
        meta = {
            "stage": stage,
            **self.checkpoint_meta(),
            "fingerprint": self.stage_fingerprint(stage),
            **(extra or {}),
        }
        return save_modules(
            self.checkpoint_path(stage), modules, configs.to_dict(self.config), meta
        )

    def load_stage(self, stage: str, modules: dict[str, nn.Module]) -> dict[str, Any]:
        path = self.checkpoint_path(stage)
        if not path.exists():
            raise CheckpointError(
                f"stage '{stage}' has no checkpoint at {path}; run that stage first"
            )
        _, meta = load_modules(path, modules)
        return meta
