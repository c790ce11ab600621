"""The segmentation pipeline: source → pixel → translate → target → feature, with resume.

``--out DIR`` holds ``config.yaml``, ``metrics.json`` (per stage: target metrics; ``final``),
``checkpoints/``, ``translated/`` (the source set in target style, with labels),
``samples/``, ``eval/<stage>/{predictions,panels}/``, ``tables/`` (Table 4 layout),
``tensorboard/`` and ``log.txt``.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

from cycada import configs
from cycada.atomic import write_json_atomic, write_text_atomic
from cycada.errors import CheckpointError, ConfigError
from cycada.training.seg_config import SEG_STAGES, SegRunConfig
from cycada.training.seg_metrics import table_csv, table_markdown
from cycada.training.seg_run import SegRun
from cycada.training.stages.pixel import PixelAdaptation
from cycada.training.stages.seg_feature import train_seg_feature
from cycada.training.stages.seg_pixel import (
    train_seg_pixel,
    translate_source,
    translated_paths,
    translated_set,
)
from cycada.training.stages.seg_supervised import train_segmenter

ROW_NAMES = {"source": "Source only", "target": "CyCADA pixel-only", "feature": "CyCADA"}


def seg_stage_plan(config: SegRunConfig) -> list[str]:
    plan = ["source"]
    if config.pixel.enabled:
        plan += ["pixel", "translate", "target"]
    if config.feature.enabled:
        plan.append("feature")
    return plan


class SegPipeline:
    def __init__(
        self,
        config: SegRunConfig,
        out_dir: Path,
        stages: list[str] | None = None,
        restart: bool = False,
        quiet: bool = False,
    ):
        self.plan = seg_stage_plan(config)
        unknown = [s for s in stages or [] if s not in self.plan]
        if unknown:
            raise ConfigError(
                f"stage '{unknown[0]}' is not part of this run (its stages: {', '.join(self.plan)})"
            )
        self.requested = list(stages) if stages else list(self.plan)
        self.config, self.out_dir = config, out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_dir / "config.yaml", configs.to_yaml(config))
        self.run = SegRun(config, out_dir, quiet=quiet)
        if restart:
            first = min(self.plan.index(s) for s in self.requested)
            for stage in self.plan[first:]:
                self.run.checkpoint_path(stage).unlink(missing_ok=True)
                self.run.resume_path(stage).unlink(missing_ok=True)
            if "translate" in self.plan[first:]:
                (translated_paths(self.run)[0] / "dataset.json").unlink(missing_ok=True)
        path = out_dir / "metrics.json"
        self.metrics: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        self.metrics.setdefault("stages", {})
        data = config.data
        self.metrics.update(
            task="seg",
            source=data.source,
            target=data.target,
            model=config.model,
            seed=config.seed,
            label_space=data.label_space,
            protocol={
                "source_train": f"{data.source}/{data.source_split}",
                "target_train": f"{data.target}/{data.target_split} (images only)",
                "target_eval": f"{data.target}/{data.eval_split}",
                "resize_width": data.resize_width,
            },
        )

    def _done(self, stage: str) -> bool:
        if stage == "translate":
            manifest = translated_paths(self.run)[0] / "dataset.json"
            ok = manifest.exists() and json.loads(manifest.read_text()).get(
                "fingerprint"
            ) == self.run.stage_fingerprint("translate")
        else:
            ok = self.run.has_checkpoint(stage)
        if ok:
            self.run.log.info(f"{stage}: finished output found, not running it again")
            return True
        if stage not in self.requested:
            raise CheckpointError(
                f"stage '{stage}' has no finished output in {self.out_dir}; run it first "
                f"(--stage {stage})"
            )
        return False

    def _record(self, stage: str, model, started: float, compare=None, extra=None) -> None:
        if not self.run.dist.is_main:  # rank 0 evaluates and writes for the whole group
            return
        metrics = self.run.evaluate(model, stage, compare)
        metrics["seconds"] = round(time.monotonic() - started, 1)
        metrics.update(extra or {})
        stages = {**self.metrics["stages"], stage: {"target": metrics}}
        self.metrics["stages"] = {s: stages[s] for s in SEG_STAGES if s in stages}
        last = [s for s in SEG_STAGES if s in stages][-1]
        final = stages[last]["target"]
        self.metrics["final"] = {
            "stage": last,
            "miou": final["miou"],
            "fwiou": final["fwiou"],
            "pixel_accuracy": final["pixel_accuracy"],
        }
        write_json_atomic(self.out_dir / "metrics.json", self.metrics)
        rows = {
            f"{ROW_NAMES.get(s, s)} ({s})": self.metrics["stages"][s]["target"]
            for s in self.metrics["stages"]
        }
        write_text_atomic(self.out_dir / "tables" / "table.md", table_markdown(rows))
        write_text_atomic(self.out_dir / "tables" / "table.csv", table_csv(rows))
        self.run.log.info(
            f"{stage}: {metrics['dataset']} mIoU {metrics['miou']:.2%}, fwIoU "
            f"{metrics['fwiou']:.2%}, pixel accuracy {metrics['pixel_accuracy']:.2%}"
        )

    def _load_task_tgt(self, stage: str):
        model = self.run.new_segmenter(backbone=False)
        self.run.load_stage(stage, {"task_tgt": model})
        return model

    def execute(self) -> dict[str, Any]:
        run = self.run
        plan = self.plan[: max(self.plan.index(s) for s in self.requested) + 1]
        task_src = run.new_segmenter(backbone=False)
        task_tgt = task_src
        pixel = None
        source_for_feature = run.source_train
        for stage in plan:
            started = time.monotonic()
            if stage == "source":
                if self._done(stage):
                    run.load_stage(stage, {"task_src": task_src})
                else:
                    generator = run.generator(stage)
                    task_src = train_segmenter(
                        run,
                        stage,
                        generator,
                        run.new_segmenter(),
                        run.source_train,
                        self.config.source,
                    )
                    run.save_stage(stage, {"task_src": task_src})
                    self._record(stage, task_src, started)
                task_tgt = task_src
            elif stage == "pixel":
                pixel = PixelAdaptation(self.config.pixel, 3, None, torch.Generator()).to(
                    run.device
                )
                if self._done(stage):
                    run.load_stage(stage, pixel.networks())
                else:
                    pixel = train_seg_pixel(run, task_src)
                    run.save_stage(stage, pixel.networks())
            elif stage == "translate":
                if not self._done(stage):
                    if run.dist.is_main:
                        translate_source(run, pixel.gen_src2tgt, run.stage_fingerprint(stage))
                    run.dist.barrier()
                source_for_feature = translated_set(run)
            elif stage == "target":
                if self._done(stage):
                    task_tgt = self._load_task_tgt(stage)
                else:
                    generator = run.generator(stage)
                    task_tgt = train_segmenter(
                        run,
                        stage,
                        generator,
                        copy.deepcopy(task_src),
                        source_for_feature,
                        self.config.target,
                    )
                    run.save_stage(stage, {"task_tgt": task_tgt})
                    self._record(stage, task_tgt, started, {"source only": task_src})
            elif stage == "feature":
                if self._done(stage):
                    task_tgt = self._load_task_tgt(stage)
                else:
                    task_tgt, summary = train_seg_feature(
                        run, copy.deepcopy(task_tgt), source_for_feature
                    )
                    run.save_stage(stage, {"task_tgt": task_tgt}, summary)
                    self._record(stage, task_tgt, started, {"source only": task_src}, summary)
        run.log.close()
        return self.metrics


def run_seg(config: SegRunConfig, out_dir: Path, **options: Any) -> dict[str, Any]:
    """Run (or resume) a segmentation CyCADA run into ``out_dir``; returns its metrics."""
    return SegPipeline(config, out_dir, **options).execute()
