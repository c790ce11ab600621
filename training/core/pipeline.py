"""What the digits and segmentation pipelines share: the stage plan with ``--stage`` and
``--restart``, finished-stage checks, the per-stage entries of ``metrics.json``, and the line an
ablation table prints under its control row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cycada.atomic import write_json_atomic
from cycada.errors import CheckpointError, ConfigError
from cycada.training.core.resume import remove_resume_files
from cycada.training.core.run_log import RunLog
from cycada.training.core.stage_store import StageStore

# under every ablation table that has a control row (digits and segmentation)
CONTROL_NOTE = (
    "The control is source only trained for as many iterations as f_S and f_T get in the full "
    "method: a gain over it is not a gain from training longer."
)


class StagedPipeline:
    """A run's stages in order; ``requested`` are those this command may train.

    Subclasses set ``stage_order`` (every stage their task can record, in order) and call
    :meth:`_discard_from_first_requested` for ``--restart`` once their run exists.
    """

    stage_order: tuple[str, ...] = ()

    def __init__(self, plan: list[str], stages: list[str] | None, out_dir: Path):
        unknown = [s for s in stages or [] if s not in plan]
        if unknown:
            raise ConfigError(
                f"stage '{unknown[0]}' is not part of this run (its stages: {', '.join(plan)})"
            )
        self.plan = plan
        self.requested = list(stages) if stages else list(plan)
        self.out_dir = out_dir
        path = out_dir / "metrics.json"
        self.metrics: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        self.metrics.setdefault("stages", {})

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

    def _must_run(self, stage: str, finished: bool, log: RunLog) -> bool:
        """False for a finished stage (reused); True for a requested unfinished one; an
        unfinished stage that this command may not train is an error naming the flag."""
        if finished:
            log.info(f"{stage}: finished output found, not running it again")
            return False
        if stage not in self.requested:
            raise CheckpointError(
                f"stage '{stage}' has no finished output in {self.out_dir}; run it first "
                f"(--stage {stage})"
            )
        return True

    def _store_stage_entry(self, stage: str, entry: dict[str, Any]) -> dict[str, Any]:
        """Put ``entry`` under ``stages`` (in stage order); returns the stages."""
        stages = {**self.metrics["stages"], stage: entry}
        self.metrics["stages"] = {s: stages[s] for s in self.stage_order if s in stages}
        return self.metrics["stages"]

    def _write_metrics(self) -> None:
        write_json_atomic(self.out_dir / "metrics.json", self.metrics)
