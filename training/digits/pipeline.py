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
from cycada.atomic import make_output_folder, write_text_atomic
from cycada.models.transforms import fit_images
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
from cycada.training.digits.config import STAGES, DigitsRunConfig
from cycada.training.digits.run import DigitsRun
from cycada.training.digits.stages.feature import train_feature
from cycada.training.digits.stages.joint import train_joint
from cycada.training.digits.stages.pixel import train_pixel
from cycada.training.digits.stages.source import train_source
from cycada.training.digits.stages.target import train_target, translated_source


class DigitsSource(SourceStage):
    def train(self, run: DigitsRun, models: RunModels) -> None:
        models.task_src = train_source(run).eval()


class DigitsPixel(PixelStage):
    measured = True  # f_S on translated images in both directions

    def train(self, run: DigitsRun, models: RunModels) -> dict[str, Any]:
        models.pixel = train_pixel(run, models.task_src).eval()
        return {"note": "f_S on G_S→T(source eval) and on G_T→S(target eval)"}

    def untrained(self, run: DigitsRun) -> PixelAdaptation:
        return new_pixel_adaptation(run)


class DigitsTaskStage(TaskStage):
    def untrained(self, run: DigitsRun) -> nn.Module:
        return run.new_task_net()


class DigitsTarget(DigitsTaskStage):
    name = "target"
    config_parts = ("source", "pixel", "target")

    def train(self, run: DigitsRun, models: RunModels) -> None:
        models.task_tgt = train_target(run, models.task_src, models.pixel.gen_src2tgt)


class DigitsFeature(DigitsTaskStage):
    name = "feature"
    config_parts = ("source", "pixel", "target", "feature")

    def train(self, run: DigitsRun, models: RunModels) -> dict[str, Any]:
        if models.pixel is not None:
            source_images = translated_source(run, models.pixel.gen_src2tgt)
        else:
            source_images = run.source_train.images
        reference = models.task_src if run.config.feature.reference == "source" else None
        models.task_tgt, summary = train_feature(run, models.task_tgt, source_images, reference)
        return summary


class DigitsJoint(Stage):
    """Stages 2-4 in one loop (the paper's Eq. 7): both generators and f_T."""

    name = "joint"
    config_parts = ("source", "pixel", "feature")

    def depends_on(self, c: Any) -> list[Any]:
        joint = {"joint_epochs": c.joint_epochs, "weight": c.joint_generator_weight}
        return [*super().depends_on(c), joint]

    def train(self, run: DigitsRun, models: RunModels) -> dict[str, Any]:
        models.pixel, models.task_tgt, summary = train_joint(run, models.task_src)
        return summary

    def load(self, run: DigitsRun, models: RunModels) -> None:
        models.pixel, models.task_tgt = new_pixel_adaptation(run), run.new_task_net()
        run.load_stage(self.name, self.networks(models))

    def networks(self, models: RunModels) -> dict[str, nn.Module]:
        return {**models.pixel.networks(), "task_tgt": models.task_tgt}


DIGITS_STAGES = stage_table(
    [DigitsSource(), DigitsPixel(), DigitsTarget(), DigitsFeature(), DigitsJoint()]
)
assert tuple(DIGITS_STAGES) == STAGES  # the command line's names (config.STAGES), in order
TASK_MODEL_STAGES = tuple(name for name, s in DIGITS_STAGES.items() if s.makes_task_model)


def new_pixel_adaptation(run: DigitsRun) -> PixelAdaptation:
    """Untrained pixel-stage networks, to load a checkpoint into."""
    pixel = PixelAdaptation(run.config.pixel, run.image_channels, None, torch.Generator())
    return pixel.to(run.device)


def digits_verdict(stages: dict[str, Any]) -> dict[str, Any] | None:
    """The stage to ship from metrics.json's stage entries (training.core.verdict)."""
    return verdict_of(
        stages, TASK_MODEL_STAGES, ("target", "accuracy"), "target_label_free", "accuracy"
    )


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
    def __init__(
        self,
        config: DigitsRunConfig,
        out_dir: Path,
        stages: list[str] | None = None,
        restart: bool = False,
        stage_cache: Path | None = None,
        quiet: bool = False,
    ):
        make_output_folder(out_dir)
        super().__init__(DIGITS_STAGES, stage_plan(config), stages, out_dir)
        self.config = config
        write_text_atomic(out_dir / "config.yaml", configs.to_yaml(config))
        self.run = DigitsRun(config, out_dir, DIGITS_STAGES, quiet=quiet)
        self.run.stage_cache = stage_cache
        if restart:
            self._discard_from_first_requested(self.run)
        self.metrics.update(self._header())

    def new_models(self) -> RunModels:
        return RunModels(task_src=self.run.new_task_net())

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
    def record(
        self, stage: Stage, models: RunModels, started: float | None, extra: dict | None
    ) -> None:
        if stage.makes_task_model:
            results = self.run.evaluate(stage.model(models), stage.name, previous=models.last)
        else:  # the pixel stage: f_S through each generator
            results = self._pixel_metrics(models.pixel, models.task_src)
        self._write_stage(stage.name, results, started, extra)

    def _write_stage(
        self, stage: str, results: dict[str, Any], started: float | None, extra: dict | None
    ) -> None:
        if started is not None:
            results["seconds"] = round(time.monotonic() - started, 1)
        results.update(extra or {})
        stages = self._store_stage_entry(stage, results)
        last = next(s for s in reversed(DIGITS_STAGES) if s in stages)
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

    def _recorded(self, stage: str) -> bool:
        """True when metrics.json holds ``stage`` evaluated the way this run evaluates."""
        entry = self.metrics["stages"].get(stage)
        if entry is None:
            return False
        run = self.run
        if run.target_eval is not None:
            wanted = f"{run.target_eval.data.name}/{run.target_eval.data.split}"
            if entry.get("target", {}).get("dataset") != wanted:
                return False
        return run.target_holdout is None or "target_label_free" in entry

    def _pixel_metrics(self, pixel: PixelAdaptation, task_src: nn.Module) -> dict[str, Any]:
        size, channels = self.config.pixel.image_size, self.run.image_channels
        on_source = TranslatedClassifier(pixel.gen_src2tgt, task_src, channels, size)
        on_target = TranslatedClassifier(pixel.gen_tgt2src, task_src, channels, size)
        return self.run.evaluate(on_source, "pixel", target_model=on_target)


def run_digits(config: DigitsRunConfig, out_dir: Path, **options: Any) -> dict[str, Any]:
    """Run (or resume) a digits CyCADA run into ``out_dir``; returns its metrics."""
    return DigitsPipeline(config, out_dir, **options).execute()
