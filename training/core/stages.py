"""The stage, the unit of a CyCADA run (paper section 3): what it trains, what its checkpoint
holds, what its weights depend on, and how a finished one is read back.

A task is an ordered table of stages (``training/digits/pipeline.py``,
``training/segmentation/pipeline.py``); :class:`~cycada.training.core.pipeline.StagedPipeline`
runs any table with one loop: a finished stage is loaded (and measured if it was not), any other
is trained, saved and measured. The networks the stages hand on to each other travel in
:class:`RunModels`. Each stage module also holds the step its training loop repeats (one
iteration), which the benchmarks time.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass
class RunModels:
    """The networks one stage hands on to the next."""

    task_src: nn.Module  # f_S
    task_tgt: nn.Module | None = None  # f_T, once a stage has made one
    pixel: Any = None  # the pixel stage's PixelAdaptation (both generators)
    source_for_target: Any = None  # what f_T trains on: the (translated) source set
    last: tuple[str, nn.Module] | None = None  # the latest task model and its stage

    def hand_on(self, stage: str, model: nn.Module) -> None:
        """``model`` is the task model of ``stage``: later stages start from it, and their
        label-free signals measure their agreement with it."""
        self.last = (stage, model)
        self.task_tgt = model


class Stage(abc.ABC):
    """One stage of a task's table."""

    name: str
    # the stage makes a task model (f_S or f_T) that can ship, measured after the stage
    makes_task_model: bool = True
    # measured after the stage even without a task model of its own (digits' pixel stage: f_S
    # on translated images)
    measured: bool = True

    @abc.abstractmethod
    def depends_on(self, config: Any) -> list[Any]:
        """The parts of the run config its weights depend on, its own and earlier stages'
        (with the task's common part, the stage's fingerprint)."""

    @abc.abstractmethod
    def train(self, run: Any, models: RunModels) -> dict[str, Any] | None:
        """Train the stage (resuming its resume state if there is one) and put its networks
        into ``models``; returns what its checkpoint and metrics record beside the weights."""

    @abc.abstractmethod
    def load(self, run: Any, models: RunModels) -> None:
        """Put the finished stage's networks, read from its checkpoint, into ``models``."""

    def networks(self, models: RunModels) -> dict[str, nn.Module] | None:
        """What its checkpoint holds (None: the stage writes its own output)."""
        return {"task_tgt": models.task_tgt}

    def finished(self, run: Any) -> bool:
        """True when its output, made with this config, is on disk (or in the stage cache)."""
        return run.has_checkpoint(self.name)

    def model(self, models: RunModels) -> nn.Module | None:
        """The task model measured after the stage."""
        return models.task_tgt


def stage_table(stages: Sequence[Stage]) -> dict[str, Stage]:
    """``{name: stage}`` in the task's order."""
    return {stage.name: stage for stage in stages}
