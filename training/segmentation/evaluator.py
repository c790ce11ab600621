"""Evaluation of a segmenter within a run: predictions at full label resolution, class
probabilities for the label-free signals, confusion matrices, prediction PNGs and panels."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from cycada.errors import DataError
from cycada.models.segmenters import Segmenter
from cycada.training.core.visuals import panel, write_png
from cycada.training.segmentation.label_free import class_shares_of_labels
from cycada.training.segmentation.metrics import ConfusionMatrix, segmentation_metrics
from cycada.training.segmentation.transforms import resize_to_width

if TYPE_CHECKING:
    from cycada.training.segmentation.run import SegRun


class SegEvaluator:
    """Runs a run's models at its width and precision on its evaluation data."""

    def __init__(self, run: SegRun):
        self.run = run
        self._source_shares: np.ndarray | None = None

    @torch.no_grad()
    def predict(
        self, model: Segmenter, image: np.ndarray, out_size: tuple[int, int]
    ) -> torch.Tensor:
        """Labels (H, W) at ``out_size`` for one RGB image, run at the configured width."""
        resized, _ = resize_to_width(image, None, self.run.config.data.resize_width)
        x = self.run.input(torch.from_numpy(resized).permute(2, 0, 1)[None])
        with self.run.autocast():
            logits = model(x)
        logits = F.interpolate(logits.float(), size=out_size, mode="bilinear", align_corners=False)
        return logits.argmax(1)[0]

    def resized(self, image: np.ndarray) -> np.ndarray:
        """An RGB image at the run's width (what the models see)."""
        return resize_to_width(image, None, self.run.config.data.resize_width)[0]

    @torch.no_grad()
    def probabilities(self, model: Segmenter, image: np.ndarray) -> torch.Tensor:
        """Softmax class probabilities (K, H, W) of one RGB image at the run's width."""
        resized = self.resized(image)
        x = self.run.input(torch.from_numpy(resized).permute(2, 0, 1)[None])
        with self.run.autocast():
            logits = model(x)
        logits = F.interpolate(
            logits.float(), size=resized.shape[:2], mode="bilinear", align_corners=False
        )
        return logits.softmax(1)[0]

    def source_class_shares(self) -> np.ndarray:
        """Share of each class in the source labels (an evenly spaced sample), computed once."""
        if self._source_shares is None:
            self._source_shares = class_shares_of_labels(
                self.run.source_train, self.run.space.num_classes
            )
        return self._source_shares

    def evaluate(
        self, model: Segmenter, stage: str, compare: dict[str, Segmenter] | None = None
    ) -> dict[str, Any]:
        """One confusion matrix over the evaluation split at full label resolution.

        Writes prediction PNGs and panels (image | ``compare`` models | this model | truth).
        """
        was_training = model.training
        model.eval()
        dataset = self.run.evaluation
        if dataset is None:
            raise DataError("this run has no labelled evaluation set (pass --eval-set)")
        confusion = ConfusionMatrix(self.run.space.num_classes, self.run.device)
        folder = self.run.out_dir / "eval" / stage
        for index in range(len(dataset)):
            image, label = dataset.load_raw(index)
            prediction = self.predict(model, image, label.shape)
            confusion.update(prediction, torch.from_numpy(label).to(self.run.device))
            if index < self.run.config.eval_panels:
                name = dataset.items[index].image.stem
                colour = self.run.space.colorize(prediction.cpu().numpy().astype(np.uint8))
                write_png(folder / "predictions" / f"{name}.png", colour)
                columns = [image]
                for other in (compare or {}).values():
                    other.eval()
                    columns.append(
                        self.run.space.colorize(
                            self.predict(other, image, label.shape).cpu().numpy().astype(np.uint8)
                        )
                    )
                columns += [colour, self.run.space.colorize(label)]
                write_png(folder / "panels" / f"{name}.png", panel(columns))
        model.train(was_training)
        metrics = segmentation_metrics(
            confusion.numpy(), self.run.space.classes, dataset.mapping.evaluated
        )
        metrics["dataset"] = f"{dataset.name}/{dataset.split}"
        metrics["confusion_matrix"] = confusion.numpy().tolist()
        return metrics
