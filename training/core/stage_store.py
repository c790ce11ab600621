"""Where a run keeps its stages: finished checkpoints and resume states under ``OUT/checkpoints``.

Each finished checkpoint carries the fingerprint of the configs its stage depends on, so a run
folder never silently mixes stages trained with different settings. It also carries the whole run
config that made it, so a newer cycada (whose fingerprints cover options it has added since)
still recognises a finished stage as its own when the only differences are those new options,
left at their defaults: upgrading never makes a user train a finished stage again.
"""

from __future__ import annotations

import abc
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cycada import configs
from cycada.atomic import write_atomic
from cycada.checkpoint import load_modules, read_header, save_modules
from cycada.errors import CheckpointError, ConfigError
from cycada.training.core.resume import StageResume
from cycada.training.core.stages import Stage


class StageStore(abc.ABC):
    """Base of the run contexts; subclasses define ``fingerprint_common`` and
    ``checkpoint_meta``, and hold their task's stage table in ``stages``."""

    out_dir: Path
    config: Any
    log: Any  # RunLog
    stages: Mapping[str, Stage]  # the task's stage table: order, and what each depends on
    is_main = True  # the process that writes (rank 0 under torchrun)
    # a folder shared by several runs (the rows of an ablation): finished stages are copied
    # there as <stage>-<fingerprint>.safetensors and reused by any run with the same fingerprint
    stage_cache: Path | None = None

    def stage_fingerprint(self, stage: str, config: Any = None) -> str:
        """Hash of the configs the result of ``stage`` depends on (``config``: another run
        config of this task than the run's own): the task's common part and the stage's own
        and earlier stages' configs (:meth:`Stage.depends_on`)."""
        c = config if config is not None else self.config
        return configs.fingerprint(
            self.fingerprint_common(c, stage), *self.stages[stage].depends_on(c)
        )

    @abc.abstractmethod
    def fingerprint_common(self, config: Any, stage: str) -> dict[str, Any]:
        """What every stage's weights depend on: the network, the seed, the data (where the
        data lives and what the run is evaluated on change no weights and are left out)."""

    def stage_seed(self, stage: str) -> int:
        """The seed offset of ``stage``: its place in the table (source 1, ...)."""
        return list(self.stages).index(stage) + 1

    def made_with_this_config(
        self, stage: str, recorded: str | None, recorded_config: dict[str, Any] | None
    ) -> bool:
        """Whether an output of ``stage`` recorded with fingerprint ``recorded`` by the run
        config ``recorded_config`` is what this run's config would make.

        An output of an older cycada matches when its config, read by this version (options it
        did not have take their defaults, which keep the old behaviour), has this fingerprint.
        A value that differs, or an option this version no longer has, does not match."""
        current = self.stage_fingerprint(stage)
        if recorded == current:
            return True
        if not recorded_config:
            return False
        try:
            then = configs.build(type(self.config), recorded_config)
        except ConfigError:
            return False
        return self.stage_fingerprint(stage, then) == current

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
            self.resume_path(stage),
            modules,
            optimizers,
            generator,
            self.stage_fingerprint(stage),
            config=configs.to_dict(self.config),
            accepts=lambda recorded, config: self.made_with_this_config(stage, recorded, config),
        )

    def cached_path(self, stage: str) -> Path | None:
        if self.stage_cache is None:
            return None
        return self.stage_cache / f"{stage}-{self.stage_fingerprint(stage)}.safetensors"

    def _cached_made_with_this_config(self, stage: str) -> Path | None:
        """The stage cache's checkpoint of ``stage`` for this config: the one named by its
        fingerprint, else one an older cycada cached under its own fingerprint."""
        cached = self.cached_path(stage)
        if cached is None or cached.exists():
            return cached
        for candidate in sorted(cached.parent.glob(f"{stage}-*.safetensors")):
            try:
                recorded_config, meta = read_header(candidate)
            except CheckpointError:  # a damaged cache entry is not this stage's
                continue
            if self.made_with_this_config(stage, meta.get("fingerprint"), recorded_config):
                return candidate
        return cached

    def has_checkpoint(self, stage: str) -> bool:
        """True when a finished checkpoint of ``stage`` made with this config exists here, or in
        the stage cache (then it is copied here)."""
        path = self.checkpoint_path(stage)
        cached = None if path.exists() else self._cached_made_with_this_config(stage)
        if cached is not None and cached.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, lambda tmp: shutil.copyfile(cached, tmp))
            self.log.info(f"{stage}: reusing {cached.name} from the stage cache")
        if not path.exists():
            return False
        recorded_config, meta = read_header(path)
        if not self.made_with_this_config(stage, meta.get("fingerprint"), recorded_config):
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
        path = save_modules(
            self.checkpoint_path(stage), modules, configs.to_dict(self.config), meta
        )
        cached = self.cached_path(stage)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(cached, lambda tmp: shutil.copyfile(path, tmp))
        return path

    def load_stage(self, stage: str, modules: dict[str, nn.Module]) -> dict[str, Any]:
        path = self.checkpoint_path(stage)
        if not path.exists():
            raise CheckpointError(
                f"stage '{stage}' has no checkpoint at {path}; run that stage first"
            )
        _, meta = load_modules(path, modules)
        return meta
