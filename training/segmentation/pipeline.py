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
from torch import nn

from cycada import configs
from cycada.atomic import write_text_atomic
from cycada.checkpoint import read_header
from cycada.plots import per_class_iou_figure
from cycada.training.core.pipeline import StagedPipeline
from cycada.training.core.pixel_adaptation import PixelAdaptation
from cycada.training.core.stages import (
    PixelStage,
    RunModels,
    SourceStage,
    Stage,
    TaskStage,
    stage_table,
)
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


class SegSource(SourceStage):
    def train(self, run: SegRun, models: RunModels) -> None:
        generator = run.generator(self.name)
        models.task_src = train_segmenter(
            run, self.name, generator, run.new_segmenter(), run.source_train, run.config.source
        )


class SegPixel(PixelStage):
    measured = False

    def train(self, run: SegRun, models: RunModels) -> None:
        models.pixel = train_pixel(run, models.task_src)

    def untrained(self, run: SegRun) -> PixelAdaptation:
        return PixelAdaptation(run.config.pixel, 3, None, torch.Generator()).to(run.device)


class SegTranslate(Stage):
    """The source set rewritten by G_S→T into ``translated/``: what f_T trains on."""

    name = "translate"
    config_parts = ("source", "pixel")
    makes_task_model = measured = False

    def train(self, run: SegRun, models: RunModels) -> None:
        if run.dist.is_main:
            translate_source(run, models.pixel.gen_src2tgt, run.stage_fingerprint(self.name))
        run.dist.barrier()
        models.source_for_target = translated_set(run)

    def load(self, run: SegRun, models: RunModels) -> None:
        models.source_for_target = translated_set(run)

    def networks(self, models: RunModels) -> None:
        return None  # translate_source writes the images and their manifest itself

    def finished(self, run: SegRun) -> bool:
        """The translated set on disk is finished and comes from this run's config (an older
        cycada's manifest records no config: the pixel checkpoint's, which made it, stands in)."""
        path = translated_paths(run)[0] / "dataset.json"
        if not path.exists():
            return False
        manifest = json.loads(path.read_text())
        config = manifest.get("config")
        pixel = run.checkpoint_path("pixel")
        if config is None and pixel.exists():
            config = read_header(pixel)[0]
        return run.made_with_this_config(self.name, manifest.get("fingerprint"), config)


class SegTaskStage(TaskStage):
    def untrained(self, run: SegRun) -> nn.Module:
        return run.new_segmenter(backbone=False)


class SegTarget(SegTaskStage):
    name = "target"
    config_parts = ("source", "pixel", "target")

    def train(self, run: SegRun, models: RunModels) -> None:
        models.task_tgt = train_segmenter(
            run,
            self.name,
            run.generator(self.name),
            copy.deepcopy(models.task_src),
            models.source_for_target,
            run.config.target,
        )


class SegFeature(SegTaskStage):
    name = "feature"
    config_parts = ("source", "pixel", "target", "feature")

    def train(self, run: SegRun, models: RunModels) -> dict[str, Any]:
        start = copy.deepcopy(models.task_tgt)
        models.task_tgt, summary = train_feature(run, start, models.source_for_target)
        return summary


SEG_STAGE_TABLE = stage_table([SegSource(), SegPixel(), SegTranslate(), SegTarget(), SegFeature()])
assert tuple(SEG_STAGE_TABLE) == SEG_STAGES  # the command line's names (config), in order
TASK_MODEL_STAGES = tuple(name for name, s in SEG_STAGE_TABLE.items() if s.makes_task_model)


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
    def __init__(
        self,
        config: SegRunConfig,
        out_dir: Path,
        stages: list[str] | None = None,
        restart: bool = False,
        quiet: bool = False,
        stage_cache: Path | None = None,
    ):
        super().__init__(SEG_STAGE_TABLE, stage_plan(config), stages, out_dir)
        self.config = config
        self.run = SegRun(config, out_dir, SEG_STAGE_TABLE, quiet=quiet)  # checks the data first
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

    def new_models(self) -> RunModels:
        return RunModels(
            task_src=self.run.new_segmenter(backbone=False), source_for_target=self.run.source_train
        )

    def record(
        self, stage: Stage, models: RunModels, started: float | None, extra: dict | None
    ) -> None:
        compare = None if stage.name == "source" else {"source only": models.task_src}
        self._record(stage.name, stage.model(models), started, compare, extra, models.last)

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
        last = [s for s in SEG_STAGE_TABLE if s in stages][-1]
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


def _target_train_text(data: SegDataConfig, count: int) -> str:
    if data.target.startswith("video:"):
        return f"{data.target} ({count} frames, no labels)"
    return f"{data.target}/{data.target_split} ({count} images, labels unused)"


def run_seg(config: SegRunConfig, out_dir: Path, **options: Any) -> dict[str, Any]:
    """Run (or resume) a segmentation CyCADA run into ``out_dir``; returns its metrics."""
    return SegPipeline(config, out_dir, **options).execute()
