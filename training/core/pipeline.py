"""The one loop that runs a task's stage table (:mod:`.stages`), with what both tasks share
around it: the plan with ``--stage`` and ``--restart``, finished stages reused, the per-stage
entries of ``metrics.json``, and the line an ablation table prints under its control row."""

from __future__ import annotations

import abc
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cycada.atomic import write_json_atomic
from cycada.errors import CheckpointError, ConfigError
from cycada.plots import curves_figure, read_scalars
from cycada.training.core.resume import remove_resume_files
from cycada.training.core.stage_store import StageStore
from cycada.training.core.stages import RunModels, Stage

# under every ablation table that has a control row (digits and segmentation)
CONTROL_NOTE = (
    "The control is source only trained for as many iterations as f_S and f_T get in the full "
    "method: a gain over it is not a gain from training longer."
)


class StagedPipeline(abc.ABC):
    """A run's stages in order; ``requested`` are those this command may train.

    Subclasses pass their stage table and plan, set ``self.run`` (a :class:`StageStore`), call
    :meth:`_discard_from_first_requested` for ``--restart`` once their run exists, and say how a
    stage is measured (:meth:`record`) and whether metrics.json already holds it
    (:meth:`_recorded`).
    """

    run: StageStore

    def __init__(
        self,
        stages: Mapping[str, Stage],
        plan: list[str],
        requested: list[str] | None,
        out_dir: Path,
    ):
        unknown = [s for s in requested or [] if s not in plan]
        if unknown:
            raise ConfigError(
                f"stage '{unknown[0]}' is not part of this run (its stages: {', '.join(plan)})"
            )
        self.stages = stages
        self.plan = plan
        self.requested = list(requested) if requested else list(plan)
        self.out_dir = out_dir
        path = out_dir / "metrics.json"
        self.metrics: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        self.metrics.setdefault("stages", {})

    # -- the loop ---------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        """Run the plan up to the last requested stage: a finished stage is read back (and
        measured if metrics.json lacks it under this run's evaluation), any other trained,
        saved and measured. Returns the metrics."""
        models = self.new_models()
        for name in self._plan_to_last_requested():
            stage = self.stages[name]
            started = time.monotonic()
            if self._finished(stage):
                stage.load(self.run, models)
                if stage.measured and not self._recorded(name):
                    self.record(stage, models, None, {"reused_checkpoint": True})
            else:
                summary = stage.train(self.run, models)
                networks = stage.networks(models)
                if networks is not None:
                    self.run.save_stage(name, networks, summary)
                if stage.measured:
                    self.record(stage, models, started, summary)
            if stage.makes_task_model:
                models.hand_on(name, stage.model(models))
        self.run.log.close()
        if self.run.is_main:
            curves_figure(self.out_dir / "curves.png", read_scalars(self.out_dir / "scalars.jsonl"))
        return self.metrics

    @abc.abstractmethod
    def new_models(self) -> RunModels:
        """The networks before the first stage (an untrained f_S to load or train)."""

    @abc.abstractmethod
    def record(
        self, stage: Stage, models: RunModels, started: float | None, extra: dict | None
    ) -> None:
        """Measure the stage's model (``models.last``: the model before it) and write the
        metrics; ``started`` is None for a stage read back from its checkpoint."""

    @abc.abstractmethod
    def _recorded(self, stage: str) -> bool:
        """True when metrics.json holds ``stage`` measured as this run measures."""

    def _finished(self, stage: Stage) -> bool:
        """True for a finished stage (reused); False for a requested unfinished one; an
        unfinished stage that this command may not train is an error naming the flag."""
        if stage.finished(self.run):
            self.run.log.info(f"{stage.name}: finished output found, not running it again")
            return True
        if stage.name not in self.requested:
            raise CheckpointError(
                f"stage '{stage.name}' has no finished output in {self.out_dir}; run it first "
                f"(--stage {stage.name})"
            )
        return False

    def _plan_to_last_requested(self) -> list[str]:
        """The plan up to the last requested stage: later stages are not run."""
        return self.plan[: max(self.plan.index(s) for s in self.requested) + 1]

    def _discard_from_first_requested(self, store: StageStore) -> list[str]:
        """``--restart``: drop the checkpoints and resume states of the first requested stage
        and every later one; returns those stages."""
        first = min(self.plan.index(s) for s in self.requested)
        for stage in self.plan[first:]:
            store.checkpoint_path(stage).unlink(missing_ok=True)
            remove_resume_files(store.resume_path(stage))
        return self.plan[first:]

    def _store_stage_entry(self, stage: str, entry: dict[str, Any]) -> dict[str, Any]:
        """Put ``entry`` under ``stages`` (in stage order); returns the stages."""
        stages = {**self.metrics["stages"], stage: entry}
        self.metrics["stages"] = {s: stages[s] for s in self.stages if s in stages}
        return self.metrics["stages"]

    def _write_metrics(self) -> None:
        write_json_atomic(self.out_dir / "metrics.json", self.metrics)
