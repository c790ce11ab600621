"""The digits pipeline: stages 1-4 (or 1 + joint), with resume, metrics and artifacts.

Layout of ``--out DIR``::

    config.yaml              resolved config
    metrics.json             per-stage source/target metrics (stable keys) and the final result
    checkpoints/<stage>.safetensors  finished stages (config inside); <stage>.resume.pt meanwhile
    eval/<stage>/confusion_{source,target}.png
    samples/pixel_step*.png  source | translated | reconstructed grids
    translated/source_train.npz       G_S→T(X_S) with labels (stage 3's training set)
    tensorboard/             scalars;  log.txt  messages
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cycada import configs
from cycada.atomic import write_text_atomic
from cycada.models.transforms import fit_images
from cycada.plots import curves_figure, read_scalars
from cycada.training.core.pipeline import StagedPipeline
from cycada.training.core.pixel_adaptation import PixelAdaptation
from cycada.training.core.verdict import verdict_line, verdict_of
from cycada.training.digits.config import DigitsRunConfig
from cycada.training.digits.run import DigitsRun
from cycada.training.digits.stages.feature import train_feature
from cycada.training.digits.stages.joint import train_joint
from cycada.training.digits.stages.pixel import train_pixel
from cycada.training.digits.stages.source import train_source
from cycada.training.digits.stages.target import train_target, translated_source

ALL_STAGES = ("source", "pixel", "target", "feature", "joint")


def digits_verdict(stages: dict[str, Any]) -> dict[str, Any] | None:
    """The stage to ship from metrics.json's stage entries (training.core.verdict)."""
    task_stages = ("source", "target", "feature", "joint")  # the stages with a task model
    return verdict_of(stages, task_stages, ("target", "accuracy"), "target_label_free", "accuracy")


def stage_plan(config: DigitsRunConfig) -> list[str]:
    """The stages a config runs, in order."""
    if config.mode in ("joint", "alternating"):
        return ["source", "joint"]
    plan = ["source"]
    if config.pixel.enabled:
        plan += ["pixel", "target"]
    if config.feature.enabled:
        plan.append("feature")
    return plan


class TranslatedClassifier(nn.Module):
    """classifier(generator(x)): evaluates f_S on translated images (pixel-stage metrics)."""

    def __init__(self, generator: nn.Module, classifier: nn.Module, channels: int, size: int):
        super().__init__()
        self.generator, self.classifier = generator, classifier
        self.channels, self.size = channels, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.generator(fit_images(x, self.channels, self.size)))


class DigitsPipeline(StagedPipeline):
    stage_order = ALL_STAGES

    def __init__(
        self,
        config: DigitsRunConfig,
        out_dir: Path,
        stages: list[str] | None = None,
        restart: bool = False,
        stage_cache: Path | None = None,
        quiet: bool = False,
    ):
        out_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(stage_plan(config), stages, out_dir)
        self.config = config
        write_text_atomic(out_dir / "config.yaml", configs.to_yaml(config))
        self.run = DigitsRun(config, out_dir, quiet=quiet)
        self.run.stage_cache = stage_cache
        if restart:
            self._discard_from_first_requested(self.run)
        self.metrics.update(self._header())

    def _header(self) -> dict[str, Any]:
        data = self.config.data
        return {
            "task": "digits",
            "source": data.source,
            "target": data.target,
            "model": self.run.model_name,
            "mode": self.config.mode,
            "seed": self.config.seed,
            "protocol": {
                "source_train": f"{data.source}/{data.source_split} (labelled)",
                "target_train": f"{data.target}/{data.target_split} (images only)",
                "source_eval": f"{data.source}/{data.eval_split}",
                "target_eval": (
                    f"{data.eval_set or data.target}/{data.eval_split}"
                    if self.run.target_eval is not None
                    else f"label-free signals on {len(self.run.target_holdout.labels)} held-out "
                    f"images of {data.target} (no labels)"
                ),
                "max_samples": data.max_samples,
            },
        }

    # -- stage bookkeeping ------------------------------------------------------------------
    def _record(
        self, stage: str, results: dict[str, Any], started: float, extra: dict | None = None
    ) -> None:
        results["seconds"] = round(time.monotonic() - started, 1)
        results.update(extra or {})
        stages = self._store_stage_entry(stage, results)
        last = next(s for s in reversed(ALL_STAGES) if s in stages)
        final: dict[str, Any] = {
            "stage": last,
            "source_accuracy": stages[last]["source"]["accuracy"],
            "evaluation": "labelled" if "target" in stages[last] else "label-free",
        }
        if "target" in stages[last]:
            final["target_accuracy"] = stages[last]["target"]["accuracy"]
        if "target_label_free" in stages[last]:
            signals = stages[last]["target_label_free"]
            final["label_free"] = {
                key: signals[key]
                for key in ("mean_confidence", "class_share_distance", "agreement_with_previous")
            }
        verdict = digits_verdict(stages)
        if verdict is not None:
            final["ship"] = verdict["stage"]
        self.metrics["verdict"] = verdict
        self.metrics["final"] = final
        self._write_metrics()
        line = f"{stage}: source {results['source']['dataset']} {results['source']['accuracy']:.2%}"
        if "target" in results:
            line += f", target {results['target']['dataset']} {results['target']['accuracy']:.2%}"
        if "target_label_free" in results:
            signals = results["target_label_free"]
            line += (
                f", label-free on {signals['images']} held-out target images: mean confidence "
                f"{signals['mean_confidence']:.1%}, class-share distance to source labels "
                f"{signals['class_share_distance']:.1%}"
            )
        self.run.log.info(line)
        if verdict is not None:
            self.run.log.info(verdict_line(verdict))

    def _record_reused(self, stage: str, started: float, model: nn.Module, pixel=None) -> None:
        """Stages reused from a checkpoint or the stage cache still get their metrics."""
        entry = self.metrics["stages"].get(stage)
        if entry is not None and self._measured_as_now(entry):
            return
        if pixel is not None:
            results = self._pixel_metrics(pixel, model)
        else:
            results = self.run.evaluate(model, stage)
        self._record(stage, results, started, {"reused_checkpoint": True})

    def _measured_as_now(self, entry: dict[str, Any]) -> bool:
        """True when a recorded stage was evaluated the way this run evaluates (same set)."""
        run = self.run
        if run.target_eval is not None:
            wanted = f"{run.target_eval.data.name}/{run.target_eval.data.split}"
            if entry.get("target", {}).get("dataset") != wanted:
                return False
        return run.target_holdout is None or "target_label_free" in entry

    def _must_train(self, stage: str) -> bool:
        return self._must_run(stage, self.run.has_checkpoint(stage), self.run.log)

    # -- the stages --------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        run = self.run
        plan = self._plan_to_last_requested()
        task_src = run.new_task_net()
        pixel: PixelAdaptation | None = None
        task_tgt = None
        for stage in plan:
            started = time.monotonic()
            if stage == "source":
                if self._must_train(stage):
                    task_src = train_source(run)
                    self.run.save_stage(stage, {"task_src": task_src})
                    self._record(stage, run.evaluate(task_src, stage), started)
                else:
                    run.load_stage(stage, {"task_src": task_src})
                    self._record_reused(stage, started, task_src)
                task_src.eval()
                task_tgt = task_src
            elif stage == "pixel":
                pixel = PixelAdaptation(
                    self.config.pixel, run.image_channels, None, torch.Generator()
                ).to(run.device)
                if self._must_train(stage):
                    pixel = train_pixel(run, task_src)
                    self.run.save_stage(stage, pixel.networks())
                    self._record(
                        stage,
                        self._pixel_metrics(pixel, task_src),
                        started,
                        {"note": "f_S on G_S→T(source eval) and on G_T→S(target eval)"},
                    )
                else:
                    run.load_stage(stage, pixel.networks())
                    self._record_reused(stage, started, task_src, pixel)
                pixel.eval()
            elif stage == "target":
                assert pixel is not None
                if self._must_train(stage):
                    task_tgt = train_target(run, task_src, pixel.gen_src2tgt)
                    self.run.save_stage(stage, {"task_tgt": task_tgt})
                    results = run.evaluate(task_tgt, stage, previous=("source", task_src))
                    self._record(stage, results, started)
                else:
                    task_tgt = run.new_task_net()
                    run.load_stage(stage, {"task_tgt": task_tgt})
                    self._record_reused(stage, started, task_tgt)
            elif stage == "feature":
                assert task_tgt is not None
                if self._must_train(stage):
                    if pixel is not None:
                        source_images = translated_source(run, pixel.gen_src2tgt)
                    else:
                        source_images = run.source_train.images
                    before = (previous_stage(self.plan, stage), task_tgt)
                    reference = task_src if run.config.feature.reference == "source" else None
                    task_tgt, summary = train_feature(run, task_tgt, source_images, reference)
                    self.run.save_stage(stage, {"task_tgt": task_tgt}, summary)
                    results = run.evaluate(task_tgt, stage, previous=before)
                    self._record(stage, results, started, summary)
                else:
                    task_tgt = run.new_task_net()
                    run.load_stage(stage, {"task_tgt": task_tgt})
                    self._record_reused(stage, started, task_tgt)
            elif stage == "joint" and self._must_train(stage):
                pixel, task_tgt, summary = train_joint(run, task_src)
                self.run.save_stage(stage, {**pixel.networks(), "task_tgt": task_tgt}, summary)
                results = run.evaluate(task_tgt, stage, previous=("source", task_src))
                self._record(stage, results, started, summary)
        run.log.close()
        curves_figure(self.out_dir / "curves.png", read_scalars(self.out_dir / "scalars.jsonl"))
        return self.metrics

    def _pixel_metrics(self, pixel: PixelAdaptation, task_src: nn.Module) -> dict[str, Any]:
        size, channels = self.config.pixel.image_size, self.run.image_channels
        on_source = TranslatedClassifier(pixel.gen_src2tgt, task_src, channels, size)
        on_target = TranslatedClassifier(pixel.gen_tgt2src, task_src, channels, size)
        return self.run.evaluate(on_source, "pixel", target_model=on_target)


def previous_stage(plan: list[str], stage: str) -> str:
    """The stage whose task model ``stage`` starts from (the pixel stage trains none)."""
    earlier = [s for s in plan[: plan.index(stage)] if s != "pixel"]
    return earlier[-1] if earlier else "source"


def run_digits(config: DigitsRunConfig, out_dir: Path, **options: Any) -> dict[str, Any]:
    """Run (or resume) a digits CyCADA run into ``out_dir``; returns its metrics."""
    return DigitsPipeline(config, out_dir, **options).execute()
