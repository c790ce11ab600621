"""Segmentation metrics from one confusion matrix over a whole split (paper Tables 4-6).

mIoU is the nan-mean of per-class IoU over the evaluated classes (classes absent from both the
ground truth and the predictions are nan and do not count); fwIoU weights IoU by ground-truth
frequency; pixel accuracy and mean class accuracy as usual. 255 is ignored.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np
import torch

from cycada.training.segmentation.label_spaces import IGNORE


class ConfusionMatrix:
    """Accumulates a (K, K) matrix (rows truth, columns prediction) on any device."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        valid = labels != IGNORE
        index = labels[valid].long() * self.num_classes + predictions[valid].long()
        counts = torch.bincount(index, minlength=self.num_classes**2)
        self.matrix += counts.view(self.num_classes, self.num_classes).to(self.matrix.device)

    def numpy(self) -> np.ndarray:
        return self.matrix.cpu().numpy()


def segmentation_metrics(
    confusion: np.ndarray,
    class_names: tuple[str, ...] | list[str],
    evaluated: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """Metrics over the ``evaluated`` class ids (default: all)."""
    evaluated = tuple(range(len(class_names))) if evaluated is None else tuple(evaluated)
    conf = confusion.astype(np.float64)
    truth = conf.sum(axis=1)
    predicted = conf.sum(axis=0)
    true_positive = np.diag(conf)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = true_positive / (truth + predicted - true_positive)
        class_accuracy = true_positive / truth
    sel = np.asarray(evaluated)
    total = truth[sel].sum()
    frequency = truth[sel] / max(total, 1)
    valid_iou = ~np.isnan(iou[sel])
    return {
        "miou": float(np.nanmean(iou[sel])) if valid_iou.any() else 0.0,
        "fwiou": float(np.nansum(frequency * np.nan_to_num(iou[sel]))),
        "pixel_accuracy": float(true_positive[sel].sum() / max(total, 1)),
        "mean_class_accuracy": float(np.nanmean(class_accuracy[sel]))
        if np.any(truth[sel] > 0)
        else 0.0,
        "per_class_iou": {
            class_names[i]: (None if np.isnan(iou[i]) else float(iou[i])) for i in evaluated
        },
        "evaluated_classes": [class_names[i] for i in evaluated],
        "num_pixels": int(total),
    }


def table_markdown(
    rows: dict[str, dict[str, Any]], over_control: dict[str, float] | None = None
) -> str:
    """Table 4's layout: one row per model, per-class IoU then mIoU, fwIoU, pixel accuracy (%).

    ``over_control`` (model name → its mIoU minus the equal-iterations control's, a fraction like
    the metrics) adds a column after mIoU, in points; models it does not name (source only, the
    control, the oracle) leave it blank."""
    first = next(iter(rows.values()))
    classes = list(first["evaluated_classes"])
    gain_column = ["mIoU over the control"] if over_control is not None else []
    header = ["Model", *classes, "mIoU", *gain_column, "fwIoU", "Pixel acc."]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, metrics in rows.items():
        cells = [_pct(metrics["per_class_iou"][c]) for c in classes]
        cells.append(_pct(metrics["miou"]))
        if over_control is not None:
            gain = over_control.get(name)
            cells.append("" if gain is None else f"{100 * gain:+.1f}")
        cells += [_pct(metrics["fwiou"]), _pct(metrics["pixel_accuracy"])]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines) + "\n"


def table_csv(rows: dict[str, dict[str, Any]], over_control: dict[str, float] | None = None) -> str:
    """The table as CSV (%, two decimals); ``over_control`` as in :func:`table_markdown`."""
    first = next(iter(rows.values()))
    classes = list(first["evaluated_classes"])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    gain_column = ["miou_over_control"] if over_control is not None else []
    writer.writerow(
        ["model", *classes, "miou", *gain_column, "fwiou", "pixel_accuracy", "mean_class_accuracy"]
    )
    for name, m in rows.items():
        gain = [_num(over_control.get(name))] if over_control is not None else []
        writer.writerow(
            [
                name,
                *[_num(m["per_class_iou"][c]) for c in classes],
                _num(m["miou"]),
                *gain,
                _num(m["fwiou"]),
                _num(m["pixel_accuracy"]),
                _num(m["mean_class_accuracy"]),
            ]
        )
    return buffer.getvalue()


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _num(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"
