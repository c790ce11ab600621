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
    # the run config's sections its weights depend on: its own and earlier stages' (with the
    # task's common part, its fingerprint)
    config_parts: tuple[str, ...] = ()
    # the stage makes a task model (f_S or f_T) that can ship, measured after the stage
    makes_task_model: bool = True
    # measured after the stage even without a task model of its own (digits' pixel stage: f_S
    # on translated images)
    measured: bool = True

    def depends_on(self, config: Any) -> list[Any]:
        """The parts of the run config its weights depend on (``config_parts``)."""
        return [getattr(config, part) for part in self.config_parts]

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


class SourceStage(Stage):
    """f_S on the labelled source (Eq. 1); a task says how it trains."""

    name = "source"
    config_parts = ("source",)

    def load(self, run: Any, models: RunModels) -> None:
        run.load_stage(self.name, {"task_src": models.task_src})
        models.task_src.eval()

    def networks(self, models: RunModels) -> dict[str, nn.Module]:
        return {"task_src": models.task_src}

    def model(self, models: RunModels) -> nn.Module:
        return models.task_src


class PixelStage(Stage):
    """Both generators of the pixel stage (Eqs. 2-4); a task says how it trains and builds
    them."""

    name = "pixel"
    config_parts = ("source", "pixel")
    makes_task_model = False

    @abc.abstractmethod
    def untrained(self, run: Any) -> Any:
        """The task's PixelAdaptation, untrained, to load a checkpoint into."""

    def load(self, run: Any, models: RunModels) -> None:
        models.pixel = self.untrained(run)
        run.load_stage(self.name, models.pixel.networks())
        models.pixel.eval()

    def networks(self, models: RunModels) -> dict[str, nn.Module]:
        return models.pixel.networks()


class TaskStage(Stage):
    """A stage that makes f_T (target, feature): read back into a new network of the task's."""

    @abc.abstractmethod
    def untrained(self, run: Any) -> nn.Module:
        """The task's network, untrained, to load a checkpoint into."""

    def load(self, run: Any, models: RunModels) -> None:
        models.task_tgt = self.untrained(run)
        run.load_stage(self.name, {"task_tgt": models.task_tgt})


def stage_table(stages: Sequence[Stage]) -> dict[str, Stage]:
    """``{name: stage}`` in the task's order."""
    return {stage.name: stage for stage in stages}
