"""The segmentation pipeline: source → pixel → translate → target → feature, with resume.

``--out DIR`` holds ``config.yaml``, ``metrics.json`` (per stage: target metrics; ``final``),
``checkpoints/``, ``translated/`` (the source set in target style, with labels),
``samples/``, ``eval/<stage>/{predictions,panels}/``, ``tables/`` (Table 4 layout),
``tensorboard/`` and ``log.txt``.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from cycada import configs
from cycada.atomic import write_text_atomic
from cycada.checkpoint import read_header
from cycada.plots import curves_figure, per_class_iou_figure, read_scalars
from cycada.training.core.pipeline import StagedPipeline
from cycada.training.core.pixel_adaptation import PixelAdaptation
from cycada.training.core.verdict import verdict_line, verdict_of
from cycada.training.segmentation.config import SEG_STAGES, SegDataConfig, SegRunConfig
from cycada.training.segmentation.label_free import (
    label_free_csv,
    label_free_signals,
    label_free_table,
)
from cycada.training.segmentation.metrics import table_csv, table_markdown
from cycada.training.segmentation.run import SegRun
from cycada.training.segmentation.stages.feature import train_feature
from cycada.training.segmentation.stages.pixel import (
    train_pixel,
    translate_source,
    translated_paths,
    translated_set,
)
from cycada.training.segmentation.stages.supervised import train_segmenter

ROW_NAMES = {"source": "Source only", "target": "CyCADA pixel-only", "feature": "CyCADA"}
TASK_MODEL_STAGES = ("source", "target", "feature")  # the stages whose task model can ship


def seg_verdict(stages: dict[str, Any]) -> dict[str, Any] | None:
    """The stage to ship from metrics.json's stage entries (training.core.verdict)."""
    return verdict_of(stages, TASK_MODEL_STAGES, ("target", "miou"), "label_free", "mIoU")


def stage_plan(config: SegRunConfig) -> list[str]:
    plan = ["source"]
    if config.pixel.enabled:
        plan += ["pixel", "translate", "target"]
    if config.feature.enabled:
        plan.append("feature")
    return plan


class SegPipeline(StagedPipeline):
    stage_order = SEG_STAGES

    def __init__(
        self,
        config: SegRunConfig,
        out_dir: Path,
        stages: list[str] | None = None,
        restart: bool = False,
        quiet: bool = False,
        stage_cache: Path | None = None,
    ):
        super().__init__(stage_plan(config), stages, out_dir)
        self.config = config
        self.run = SegRun(config, out_dir, quiet=quiet)  # validates the data first
        self.run.stage_cache = stage_cache  # ablation rows share finished stages through it
        write_text_atomic(out_dir / "config.yaml", configs.to_yaml(config))
        if restart and "translate" in self._discard_from_first_requested(self.run):
            # the old generator's images go too
            shutil.rmtree(translated_paths(self.run)[0], ignore_errors=True)
        data = config.data
        evaluation = self.run.evaluation_kind
        self.metrics.update(
            task="seg",
            source=data.source,
            target=data.target,
            model=config.model,
            seed=config.seed,
            label_space=data.label_space,
            evaluation=evaluation,
            protocol={
                "source_train": f"{data.source}/{data.source_split}",
                "target_train": _target_train_text(data, len(self.run.target_train)),
                "target_eval": evaluation["labelled"] or evaluation["label_free"],
                "resize_width": data.resize_width,
            },
        )
        labelled, label_free = evaluation["labelled"], evaluation["label_free"]
        self.run.log.info(
            "evaluation: "
            + (f"labelled on {labelled}" if labelled else "no labelled set")
            + (f"; label-free signals on {label_free}" if label_free else "")
        )

    def _done(self, stage: str) -> bool:
        if stage == "translate":
            return not self._must_run(stage, self._translation_done(), self.run.log)
        return not self._must_run(stage, self.run.has_checkpoint(stage), self.run.log)

    def _translation_done(self) -> bool:
        """The translated set on disk is finished and comes from this run's config (an older
        cycada's manifest records no config: the pixel checkpoint's, which made it, stands in)."""
        path = translated_paths(self.run)[0] / "dataset.json"
        if not path.exists():
            return False
        manifest = json.loads(path.read_text())
        config = manifest.get("config")
        pixel = self.run.checkpoint_path("pixel")
        if config is None and pixel.exists():
            config = read_header(pixel)[0]
        return self.run.made_with_this_config("translate", manifest.get("fingerprint"), config)

    def _record(
        self,
        stage: str,
        model,
        started: float | None,
        compare=None,
        extra=None,
        previous: tuple[str, object] | None = None,
    ) -> None:
        """Evaluate a finished stage (labelled set and/or label-free signals) and write the
        metrics, tables and log line."""
        if not self.run.dist.is_main:  # rank 0 evaluates and writes for the whole group
            return
        entry: dict[str, Any] = dict(self.metrics["stages"].get(stage, {}))
        if started is not None:
            entry["seconds"] = round(time.monotonic() - started, 1)
        entry.update(extra or {})
        if self.run.evaluation is not None:
            metrics = self.run.evaluator.evaluate(model, stage, compare)
            metrics.update({k: entry[k] for k in ("seconds", *(extra or {})) if k in entry})
            entry["target"] = metrics
            self.run.log.info(
                f"{stage}: {metrics['dataset']} mIoU {metrics['miou']:.2%}, fwIoU "
                f"{metrics['fwiou']:.2%}, pixel accuracy {metrics['pixel_accuracy']:.2%}"
            )
        if self.run.signal_set is not None:
            signals = label_free_signals(self.run, model, stage, previous, compare)
            entry["label_free"] = signals
            agreement = signals["agreement_with_previous"]
            self.run.log.info(
                f"{stage}: label-free on {signals['frames']} frames of {signals['dataset']}: mean "
                f"confidence {signals['mean_confidence']:.1%}, class-share distance to source "
                f"labels {signals['class_share_distance']:.1%}"
                + (
                    f", agreement with {signals['previous_stage']} {agreement:.1%}"
                    if agreement is not None
                    else ""
                )
            )
        self._store_stage_entry(stage, entry)
        self._write_results()

    def _write_results(self) -> None:
        stages = self.metrics["stages"]
        last = [s for s in SEG_STAGES if s in stages][-1]
        final: dict[str, Any] = {"stage": last}
        if "target" in stages[last]:
            labelled = stages[last]["target"]
            final.update(
                evaluation="labelled",
                dataset=labelled["dataset"],
                miou=labelled["miou"],
                fwiou=labelled["fwiou"],
                pixel_accuracy=labelled["pixel_accuracy"],
            )
        else:
            final["evaluation"] = "label-free"
        if "label_free" in stages[last]:
            signals = stages[last]["label_free"]
            final["label_free"] = {
                key: signals[key]
                for key in (
                    "mean_confidence",
                    "low_confidence_share",
                    "class_share_distance",
                    "agreement_with_previous",
                )
            }
        verdict = seg_verdict(stages)
        if verdict is not None:
            final["ship"] = verdict["stage"]
            if verdict != self.metrics.get("verdict"):
                self.run.log.info(verdict_line(verdict))
            self.metrics["verdict"] = verdict
        self.metrics["final"] = final
        self._write_metrics()
        tables = self.out_dir / "tables"
        for key, markdown, comma_separated, name in (
            ("target", table_markdown, table_csv, "table"),
            ("label_free", label_free_table, label_free_csv, "label_free"),
        ):
            rows = {
                f"{ROW_NAMES.get(s, s)} ({s})": stages[s][key] for s in stages if key in stages[s]
            }
            if rows:
                text = markdown(rows)
                if verdict is not None:
                    text += f"\n{verdict_line(verdict)}\n"
                write_text_atomic(tables / f"{name}.md", text)
                write_text_atomic(tables / f"{name}.csv", comma_separated(rows))
        ious = {
            ROW_NAMES.get(s, s): {k: (math.nan if v is None else v) for k, v in iou.items()}
            for s in stages
            if (iou := stages[s].get("target", {}).get("per_class_iou"))
        }
        if ious:
            per_class_iou_figure(
                tables / "per_class_iou.png",
                ious,
                list(self.run.space.classes),
                f"per-class IoU on {self.metrics['evaluation']['labelled']}",
            )

    def _recorded(self, stage: str) -> bool:
        """True when metrics.json holds this stage's results under the run's evaluation."""
        entry = self.metrics["stages"].get(stage, {})
        labelled = self.run.evaluation is None or (
            entry.get("target", {}).get("dataset") == self.metrics["evaluation"]["labelled"]
        )
        return labelled and (self.run.signal_set is None or "label_free" in entry)

    def _load_task_tgt(self, stage: str):
        model = self.run.new_segmenter(backbone=False)
        self.run.load_stage(stage, {"task_tgt": model})
        return model

    def execute(self) -> dict[str, Any]:
        run = self.run
        plan = self._plan_to_last_requested()
        task_src = run.new_segmenter(backbone=False)
        task_tgt = task_src
        pixel = None
        source_for_feature = run.source_train
        source_only = {"source only": task_src}
        for stage in plan:
            started = time.monotonic()
            if stage == "source":
                if self._done(stage):
                    run.load_stage(stage, {"task_src": task_src})
                    if not self._recorded(stage):  # e.g. f_S copied from another run
                        self._record(stage, task_src, None)
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
                source_only = {"source only": task_src}
            elif stage == "pixel":
                pixel = PixelAdaptation(self.config.pixel, 3, None, torch.Generator()).to(
                    run.device
                )
                if self._done(stage):
                    run.load_stage(stage, pixel.networks())
                else:
                    pixel = train_pixel(run, task_src)
                    run.save_stage(stage, pixel.networks())
            elif stage == "translate":
                if not self._done(stage):
                    if run.dist.is_main:
                        translate_source(run, pixel.gen_src2tgt, run.stage_fingerprint(stage))
                    run.dist.barrier()
                source_for_feature = translated_set(run)
            elif stage in ("target", "feature"):
                previous = ("source" if task_tgt is task_src else "target", task_tgt)
                if self._done(stage):
                    task_tgt = self._load_task_tgt(stage)
                    if not self._recorded(stage):
                        self._record(stage, task_tgt, None, source_only, previous=previous)
                    continue
                if stage == "target":
                    task_tgt = train_segmenter(
                        run,
                        stage,
                        run.generator(stage),
                        copy.deepcopy(task_src),
                        source_for_feature,
                        self.config.target,
                    )
                    summary = None
                else:
                    task_tgt, summary = train_feature(
                        run, copy.deepcopy(task_tgt), source_for_feature
                    )
                run.save_stage(stage, {"task_tgt": task_tgt}, summary)
                self._record(stage, task_tgt, started, source_only, summary, previous)
        run.log.close()
        if run.dist.is_main:
            curves_figure(self.out_dir / "curves.png", read_scalars(self.out_dir / "scalars.jsonl"))
        return self.metrics


def _target_train_text(data: SegDataConfig, count: int) -> str:
    if data.target.startswith("video:"):
        return f"{data.target} ({count} frames, no labels)"
    return f"{data.target}/{data.target_split} ({count} images, labels unused)"


def run_seg(config: SegRunConfig, out_dir: Path, **options: Any) -> dict[str, Any]:
    """Run (or resume) a segmentation CyCADA run into ``out_dir``; returns its metrics."""
    return SegPipeline(config, out_dir, **options).execute()
