"""Shared state of one segmentation run: data, device, precision, loaders, evaluation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from cycada import configs
from cycada.errors import DataError
from cycada.training.core.device import resolve_device
from cycada.training.core.distributed import init_distributed, same_weights
from cycada.training.core.run_log import RunLog
from cycada.training.core.stage_store import StageStore
from cycada.training.core.visuals import panel, write_png
from cycada.training.segmentation.config import SEG_STAGES, SegRunConfig
from cycada.training.segmentation.data import SegmentationSet
from cycada.training.segmentation.domains import load_run_data
from cycada.training.segmentation.label_spaces import LABEL_SPACES
from cycada.training.segmentation.metrics import ConfusionMatrix, segmentation_metrics
from cycada.training.segmentation.networks import Segmenter, build_segmenter, load_backbone
from cycada.training.segmentation.transforms import SegTransform, resize_to_width

# the data keys f_S depends on; and the keys that change no stage's weights
SOURCE_DATA_KEYS = (
    "source",
    "source_split",
    "label_space",
    "resize_width",
    "crop_mode",
    "max_samples",
)
NOT_TRAINING_KEYS = (
    "data_root",
    "source_root",
    "target_root",
    "eval_root",
    "eval_set",
    "eval_split",
    "workers",
)


def to_input(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 (N, 3, H, W) → float in [-1, 1] on ``device``."""
    x = images.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class SegRun(StageStore):
    def __init__(self, config: SegRunConfig, out_dir: Path, quiet: bool = False):
        self.config, self.out_dir = config, out_dir
        self.dist = init_distributed(config.device)
        self.device = resolve_device(config.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.cuda = self.device.type == "cuda"
        self.space = LABEL_SPACES[config.data.label_space]
        data = config.data

        out_dir.mkdir(parents=True, exist_ok=True)
        self.log = RunLog(out_dir, quiet=quiet or not self.dist.is_main, write=self.dist.is_main)
        run_data = load_run_data(
            data,
            out_dir,
            self.space,
            config.eval_max_samples,
            self.log.info,
            self.dist.is_main,
            self.dist.barrier,
            quiet=quiet or not self.dist.is_main,
        )
        self.source_train = run_data.source_train
        self.target_train = run_data.target_train
        self.target_holdout = run_data.target_holdout
        self.evaluation = run_data.evaluation
        self.evaluation_kind = run_data.describe_evaluation()
        self._source_shares: np.ndarray | None = None
        if self.dist.enabled:
            self.log.info(
                f"data parallel: {self.dist.world_size} processes, {self.device} on this one; "
                "effective batch = batch_size x processes"
            )

    # -- networks and precision -------------------------------------------------------------
    def new_segmenter(self, backbone: bool = True) -> Segmenter:
        model = build_segmenter(self.config.model, self.space.num_classes)
        if backbone and self.config.backbone_weights:
            loaded = load_backbone(model, self.config.backbone_weights)
            self.log.info(f"backbone: {len(loaded)} tensors from {self.config.backbone_weights}")
        model = model.to(self.device)
        if self.cuda and self.config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.cuda and self.config.amp:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def input(self, images: torch.Tensor) -> torch.Tensor:
        return to_input(images, self.device, self.cuda and self.config.channels_last)

    def generator(self, stage: str) -> torch.Generator:
        """Seeds a stage: networks initialise alike on every process, batches differ by rank."""
        offset = SEG_STAGES.index(stage) + 1
        torch.manual_seed(self.config.seed * 100 + offset)
        return torch.Generator().manual_seed(self.data_seed(stage))

    def data_seed(self, stage: str, epoch: int = 0) -> int:
        offset = SEG_STAGES.index(stage) + 1
        return self.config.seed * 100 + offset + 100_003 * self.dist.rank + 7919 * epoch

    def sync_gradients(self, *modules: torch.nn.Module) -> None:
        """Average gradients over the data-parallel processes (no-op in a single process)."""
        self.dist.average_gradients(modules)

    def save_stage(self, stage, modules, extra=None):
        """Rank 0 writes; the other processes wait, then check their replicas are identical."""
        path = self.checkpoint_path(stage)
        self.dist.average_buffers(modules.values())
        if self.dist.is_main:
            super().save_stage(stage, modules, extra)
        self.dist.barrier()
        if not self.dist.is_main:
            from safetensors.torch import load_file

            differing = same_weights(modules, load_file(str(path)))
            if differing:
                raise RuntimeError(
                    f"rank {self.dist.rank}: replica differs from rank 0 after '{stage}' "
                    f"({len(differing)} tensors, e.g. {differing[0]})"
                )
        return path

    def stage_resume(self, stage, modules, optimizers, generator):
        resume = super().stage_resume(stage, modules, optimizers, generator)
        if not self.dist.enabled:
            return resume
        return _RankResume(resume, self, stage)

    def train_transform(
        self, stage: str, crop: int, flip: bool, *datasets: SegmentationSet
    ) -> SegTransform:
        """Random ``crop`` x ``crop`` crops of the resized images; with ``data.crop_mode`` cap,
        cut down to the size of the first image of each dataset (resized), so crops are image,
        not padding."""
        data = self.config.data
        height = width = crop
        if data.crop_mode == "cap":
            for dataset in datasets:
                image, _ = dataset.load_raw(0)
                image, _ = resize_to_width(image, None, data.resize_width)
                height, width = min(height, image.shape[0]), min(width, image.shape[1])
            if (height, width) != (crop, crop):
                self.log.info(f"{stage}: crops {height}x{width} (crop {crop} capped at the images)")
        return SegTransform(data.resize_width, height, width, flip)

    def batches(
        self,
        dataset: SegmentationSet,
        transform: SegTransform,
        batch_size: int,
        generator: torch.Generator,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Shuffled transformed batches forever (a new random crop/flip of each image per pass)."""
        dataset = dataset.with_transform(transform, seed=self.config.seed)
        batch_size = min(batch_size, len(dataset))
        epoch = 0
        while True:
            dataset.epoch = epoch
            loader = DataLoader(
                dataset,
                batch_size=batch_size,
                shuffle=True,
                drop_last=True,
                generator=generator,
                num_workers=self.config.data.workers,
                pin_memory=self.cuda,
            )
            yield from loader
            epoch += 1

    # -- checkpoints --------------------------------------------------------------------------
    def stage_fingerprint(self, stage: str) -> str:
        """Hash of what a stage's weights depend on.

        f_S depends only on the source side, so one source checkpoint serves runs that adapt to
        different targets (copy ``checkpoints/source.safetensors`` into the new run folder).
        Where the data lives and how the run is evaluated change no weights and are left out.
        """
        c = self.config
        data = configs.to_dict(c.data)
        if stage == "source":
            data = {key: data[key] for key in SOURCE_DATA_KEYS}
        else:
            data = {key: value for key, value in data.items() if key not in NOT_TRAINING_KEYS}
        parts: list[Any] = [
            {"model": c.model, "seed": c.seed, "backbone": c.backbone_weights, "data": data},
            c.source,
        ]
        position = SEG_STAGES.index(stage)
        if position >= SEG_STAGES.index("pixel"):
            parts.append(c.pixel)
        if position >= SEG_STAGES.index("target"):
            parts.append(c.target)
        if position >= SEG_STAGES.index("feature"):
            parts.append(c.feature)
        return configs.fingerprint(*parts)

    def checkpoint_meta(self) -> dict[str, Any]:
        return {
            "task": "seg",
            "model": self.config.model,
            "label_space": self.space.name,
            "class_names": list(self.space.classes),
            "resize_width": self.config.data.resize_width,
        }

    # -- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self, model: Segmenter, image: np.ndarray, out_size: tuple[int, int]
    ) -> torch.Tensor:
        """Labels (H, W) at ``out_size`` for one RGB image, run at the configured width."""
        resized, _ = resize_to_width(image, None, self.config.data.resize_width)
        x = self.input(torch.from_numpy(resized).permute(2, 0, 1)[None])
        with self.autocast():
            logits = model(x)
        logits = F.interpolate(logits.float(), size=out_size, mode="bilinear", align_corners=False)
        return logits.argmax(1)[0]

    def resized(self, image: np.ndarray) -> np.ndarray:
        """An RGB image at the run's width (what the models see)."""
        return resize_to_width(image, None, self.config.data.resize_width)[0]

    @torch.no_grad()
    def probabilities(self, model: Segmenter, image: np.ndarray) -> torch.Tensor:
        """Softmax class probabilities (K, H, W) of one RGB image at the run's width."""
        resized = self.resized(image)
        x = self.input(torch.from_numpy(resized).permute(2, 0, 1)[None])
        with self.autocast():
            logits = model(x)
        logits = F.interpolate(
            logits.float(), size=resized.shape[:2], mode="bilinear", align_corners=False
        )
        return logits.softmax(1)[0]

    def source_class_shares(self) -> np.ndarray:
        """Share of each class in the source labels (an evenly spaced sample), computed once."""
        if self._source_shares is None:
            from cycada.training.segmentation.label_free import class_shares_of_labels

            self._source_shares = class_shares_of_labels(self.source_train, self.space.num_classes)
        return self._source_shares

    def evaluate(
        self, model: Segmenter, stage: str, compare: dict[str, Segmenter] | None = None
    ) -> dict[str, Any]:
        """One confusion matrix over the evaluation split at full label resolution.

        Writes prediction PNGs and panels (image | ``compare`` models | this model | truth).
        """
        was_training = model.training
        model.eval()
        dataset = self.evaluation
        if dataset is None:
            raise DataError("this run has no labelled evaluation set (pass --eval-set)")
        confusion = ConfusionMatrix(self.space.num_classes, self.device)
        folder = self.out_dir / "eval" / stage
        for index in range(len(dataset)):
            image, label = dataset.load_raw(index)
            prediction = self.predict(model, image, label.shape)
            confusion.update(prediction, torch.from_numpy(label).to(self.device))
            if index < self.config.eval_panels:
                name = dataset.items[index].image.stem
                colour = self.space.colorize(prediction.cpu().numpy().astype(np.uint8))
                write_png(folder / "predictions" / f"{name}.png", colour)
                columns = [image]
                for other in (compare or {}).values():
                    other.eval()
                    columns.append(
                        self.space.colorize(
                            self.predict(other, image, label.shape).cpu().numpy().astype(np.uint8)
                        )
                    )
                columns += [colour, self.space.colorize(label)]
                write_png(folder / "panels" / f"{name}.png", panel(columns))
        model.train(was_training)
        metrics = segmentation_metrics(
            confusion.numpy(), self.space.classes, dataset.mapping.evaluated
        )
        metrics["dataset"] = f"{dataset.name}/{dataset.split}"
        metrics["confusion_matrix"] = confusion.numpy().tolist()
        return metrics


class _RankResume:
    """A stage's resume file under data parallelism: rank 0 writes it; every rank restores it
    and then re-seeds its batch order by rank, so processes keep drawing different batches."""

    def __init__(self, inner, run: SegRun, stage: str):
        self.inner, self.run, self.stage = inner, run, stage

    def restore(self):
        start, extra = self.inner.restore()
        self.inner.generator.manual_seed(self.run.data_seed(self.stage, start))
        return start, extra

    def save(self, next_epoch, extra=None) -> None:
        if self.run.dist.is_main:
            self.inner.save(next_epoch, extra)

    def finish(self) -> None:
        if self.run.dist.is_main:
            self.inner.finish()
