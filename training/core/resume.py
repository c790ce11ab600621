"""Epoch-level resume of a stage: networks, optimizers, RNG states and loop counters."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cycada.checkpoint import load_state, save_state
from cycada.errors import CheckpointError


class StageResume:
    """Saves a stage's full training state after each epoch and restores it on restart.

    The file is written atomically, so an interrupted save leaves the previous epoch's state.
    """

    def __init__(
        self,
        path: Path,
        modules: dict[str, nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        generator: torch.Generator,
        fingerprint: str,
        config: dict[str, Any] | None = None,
        accepts: Callable[[str | None, dict[str, Any] | None], bool] | None = None,
    ):
        """``config``: the run config, saved beside the state; ``accepts(fingerprint, config)``
        decides whether a saved state whose fingerprint differs is still this run's (an older
        cycada's state); without it only an equal fingerprint is."""
        self.path, self.modules, self.optimizers = path, modules, optimizers
        self.generator, self.fingerprint = generator, fingerprint
        self.config, self.accepts = config, accepts

    def restore(self) -> tuple[int, dict[str, Any]]:
        """Load the saved state if there is one; returns (next epoch, extra counters)."""
        if not self.path.exists():
            return 0, {}
        state = load_state(self.path)
        recorded = state.get("fingerprint")
        if recorded != self.fingerprint and not (
            self.accepts is not None and self.accepts(recorded, state.get("config"))
        ):
            raise CheckpointError(
                f"{self.path} is an unfinished stage of a run with a different config; use a new "
                "--out, or --restart to discard it"
            )
        for name, module in self.modules.items():
            module.load_state_dict(state["modules"][name])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        return int(state["epoch"]), dict(state.get("extra", {}))

    def save(self, next_epoch: int, extra: dict[str, Any] | None = None) -> None:
        save_state(
            self.path,
            {
                "epoch": next_epoch,
                "fingerprint": self.fingerprint,
                "config": self.config,
                "modules": {n: m.state_dict() for n, m in self.modules.items()},
                "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
                "generator": self.generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "extra": extra or {},
            },
        )

    def finish(self) -> None:
        remove_resume_files(self.path)


def remove_resume_files(path: Path) -> None:
    """Remove a stage's resume file ``<stage>.resume.pt`` and the files data-parallel ranks
    wrote beside it (``<stage>.resume.rank<R>.step<N>.pt``), whatever number of processes ran."""
    path.unlink(missing_ok=True)
    stage = path.name.removesuffix(".resume.pt")
    for rank_file in path.parent.glob(f"{stage}.resume.rank*.pt"):
        rank_file.unlink(missing_ok=True)
