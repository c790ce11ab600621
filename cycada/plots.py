"""Figures a person reads: confusion matrices with class names, per-class IoU bars, training
curves and benchmark trade-offs, drawn with matplotlib (Agg, no display) and written atomically.
OpenCV stays for the video overlays."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from cycada.atomic import write_atomic


def _pyplot():
    # matplotlib takes a second to import: only when a figure is drawn
    import matplotlib

    matplotlib.use("Agg")
    # matplotlib takes a second to import: only when a figure is drawn
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: str | Path) -> Path:
    plt = _pyplot()
    try:
        figure.tight_layout()
        return write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(figure)


def confusion_figure(
    path: str | Path, confusion: np.ndarray, class_names: list[str], title: str
) -> Path:
    """Row-normalised confusion matrix (rows = truth, columns = prediction), class names on both
    axes, counts in the cells when there are few classes."""
    plt = _pyplot()
    k = len(class_names)
    rows = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.45 * k + 2.0)
    figure, axes = plt.subplots(figsize=(side + 1.0, side))
    image = axes.imshow(rows, cmap="Blues", vmin=0.0, vmax=1.0)
    axes.set_xticks(range(k), class_names, rotation=60, ha="right", fontsize=8)
    axes.set_yticks(range(k), class_names, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title, fontsize=10)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if confusion[i, j]:
                    colour = "white" if rows[i, j] > 0.5 else "black"
                    axes.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=6,
                              color=colour)  # fmt: skip
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class")
    return _save(figure, path)


def per_class_iou_figure(
    path: str | Path, stages: dict[str, dict[str, float]], class_names: list[str], title: str
) -> Path:
    """Grouped bars: one group per class, one bar per stage (IoU in %); NaN classes left out."""
    plt = _pyplot()
    names = [
        n for n in class_names if any(not math.isnan(s.get(n, math.nan)) for s in stages.values())
    ]
    figure, axes = plt.subplots(figsize=(max(6.0, 0.6 * len(names) * max(1, len(stages)) / 2), 4))
    width = 0.8 / max(1, len(stages))
    positions = np.arange(len(names))
    for index, (stage, ious) in enumerate(stages.items()):
        values = [100 * ious.get(n, math.nan) for n in names]
        axes.bar(positions + index * width - 0.4 + width / 2, values, width, label=stage)
    axes.set_xticks(positions, names, rotation=45, ha="right", fontsize=8)
    axes.set_ylabel("IoU (%)")
    axes.set_ylim(0, 100)
    axes.grid(axis="y", alpha=0.3)
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=8)
    return _save(figure, path)


def read_scalars(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def curves_figure(path: str | Path, scalars: list[dict[str, Any]]) -> Path | None:
    """One panel per stage, every logged scalar against its step: losses, discriminator
    accuracy, gate openings (``updated``), learning rate. None when nothing was logged."""
    stages: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for row in scalars:
        series = stages.setdefault(row["stage"], {})
        for key, value in row.items():
            if key not in ("stage", "step") and isinstance(value, (int, float)):
                series.setdefault(key, []).append((row["step"], float(value)))
    if not stages:
        return None
    plt = _pyplot()
    figure, panels = plt.subplots(len(stages), 1, figsize=(8, 2.8 * len(stages)), squeeze=False)
    for axes, (stage, series) in zip(panels[:, 0], stages.items()):
        for key, points in sorted(series.items()):
            steps, values = zip(*points)
            style = "--" if key in ("lr", "updated", "disc_accuracy") else "-"
            axes.plot(steps, values, style, label=key, linewidth=1)
        axes.set_title(stage, fontsize=10)
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, ncol=3)
    return _save(figure, path)


def bench_figure(path: str | Path, served: list[dict], in_process: list[dict], title: str) -> Path:
    """Throughput against p99 latency: the served sweep as a line marked with its concurrency
    (or rate), in-process engines as reference points."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for mode in ("concurrency", "rate"):
        rows = [r for r in served if r["mode"] == mode and not math.isnan(r["p99_ms"])]
        if not rows:
            continue
        x = [r["p99_ms"] for r in rows]
        y = [r["throughput_per_s"] for r in rows]
        axes.plot(x, y, "o-", label=f"served, by {mode}")
        for row, xi, yi in zip(rows, x, y):
            axes.annotate(f"{row['value']:g}", (xi, yi), textcoords="offset points",
                          xytext=(4, 4), fontsize=8)  # fmt: skip
    for row in in_process:
        if "error" in row:
            continue
        axes.plot(row["p99_ms"], row["throughput_per_s"], "x", markersize=9, mew=2,
                  label=f"in process: {row['engine']} (batch {row['batch']})")  # fmt: skip
    axes.set_xlabel("p99 latency (ms)")
    axes.set_ylabel("throughput (images/s)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    return _save(figure, path)


def seeds_figure(
    path: str | Path,
    rows: dict[str, list[float]],
    differences: dict[str, tuple[list[float], tuple[float, float] | None]],
    metric_name: str,
    title: str,
) -> Path:
    """Left: one line per ablation row, each seed's value a dot, the mean a bar. Right: each
    paired difference, its per-seed gaps as dots and its 95 % interval as a line around the
    mean, beside zero: a gap whose line crosses zero is within the seed-to-seed noise."""
    plt = _pyplot()
    height = 0.5 * max(len(rows), len(differences), 1) + 1.5
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, height), squeeze=True)
    for axes, lines in ((left, rows), (right, {k: v[0] for k, v in differences.items()})):
        for line, values in enumerate(reversed(list(lines.values()))):
            axes.plot(values, [line] * len(values), "o", color="tab:blue", alpha=0.6)
            mean = sum(values) / len(values)
            axes.plot([mean, mean], [line - 0.3, line + 0.3], "-", color="black", linewidth=2)
        axes.set_yticks(range(len(lines)), list(reversed(list(lines))), fontsize=8)
        axes.set_ylim(-0.7, max(len(lines), 1) - 0.3)
        axes.grid(axis="x", alpha=0.3)
    for line, (_, interval) in enumerate(reversed(list(differences.values()))):
        if interval is not None:
            right.plot(interval, [line, line], "-", color="tab:red", linewidth=1.5)
    right.axvline(0, color="grey", linewidth=1)
    left.set_xlabel(f"{metric_name} (%): dots are seeds, bars the mean")
    right.set_xlabel("difference (points): dots are seeds, red the 95 % interval")
    figure.suptitle(title, fontsize=9)
    return _save(figure, path)
