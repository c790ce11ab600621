"""Classification metrics from one confusion matrix: accuracy and per-class accuracy."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts; rows are true classes, columns predictions."""
    index = labels.astype(np.int64) * num_classes + predictions.astype(np.int64)
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def classification_metrics(confusion: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Accuracy, per-class accuracy (recall) and the matrix itself, with stable keys."""
    totals = confusion.sum(axis=1)
    correct = np.diag(confusion)
    per_class = np.where(totals > 0, correct / np.maximum(totals, 1), np.nan)
    return {
        "accuracy": float(correct.sum() / max(confusion.sum(), 1)),
        "per_class_accuracy": {
            name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, per_class)
        },
        "mean_class_accuracy": float(np.nanmean(per_class)) if np.any(totals > 0) else 0.0,
        "num_samples": int(confusion.sum()),
        "confusion_matrix": confusion.astype(int).tolist(),
    }


@torch.no_grad()
def predict(
    model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device
) -> np.ndarray:
    """Argmax predictions of ``model`` (eval mode) on float images (N, C, H, W)."""
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device, non_blocking=True)
        outputs.append(model(batch).argmax(dim=1).cpu())
    model.train(was_training)
    return torch.cat(outputs).numpy()
