"""Label-free signals of a segmenter, per stage, on target images none of them trained on.

Measured on the held-out target frames of an unlabelled target, else on the labelled evaluation
set's images with the labels unused (``SegRunData.signal_set``). Per stage:

- ``mean_confidence``: mean over pixels of the top softmax probability, and
  ``low_confidence_share``: the share of pixels whose top probability is below 0.5;
- ``class_shares``: the share of pixels predicted as each class, beside ``source_class_shares``
  (the source labels' shares) and their total-variation distance ``class_share_distance``
  (0 = the same mix of classes, 1 = disjoint);
- ``agreement_with_previous``: the share of pixels labelled as the previous stage labels them
  (and ``agreement_with_source_only``: as the source-only model labels them).

None of these is accuracy. Confidence rises when a model is sure, right or wrong (entropy
minimisation raises it without making anything correct); class shares can differ from the source
for good reasons (a highway has more road than a city); agreement says how much a stage changed,
not whether for the better. Together they catch collapses (one class everywhere, confidence
falling after adaptation, a stage that changed nothing) and they let two runs on the same footage
be compared; only a labelled evaluation set measures accuracy.
"""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING, Any

import numpy as np

from cycada.errors import DataError
from cycada.models.segmenters import Segmenter
from cycada.signals import SignalCounts, stage_signals
from cycada.training.core.visuals import panel, write_png
from cycada.training.segmentation.data import SegmentationSet, read_image
from cycada.training.segmentation.label_spaces import IGNORE

if TYPE_CHECKING:
    from cycada.training.segmentation.run import SegRun

SOURCE_LABEL_SAMPLE = 200  # source labels read for the class shares (evenly spaced)
__all__ = ["label_free_signals", "label_free_table", "label_free_csv"]


def class_shares_of_labels(dataset: SegmentationSet, num_classes: int) -> np.ndarray:
    """Share of labelled pixels per class over an evenly spaced sample of ``dataset``."""
    count = min(len(dataset), SOURCE_LABEL_SAMPLE)
    counts = np.zeros(num_classes, np.float64)
    for index in np.linspace(0, len(dataset) - 1, count).round().astype(int):
        _, label = dataset.load_raw(int(index))
        valid = label[label != IGNORE]
        counts += np.bincount(valid.ravel(), minlength=num_classes)[:num_classes]
    return counts / max(counts.sum(), 1.0)


def _frame_outputs(
    run: SegRun, model: Segmenter, image: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(labels uint8 (H, W), top probability float32 (H, W)) at the run's width."""
    probabilities = run.evaluator.probabilities(model, image)
    top, labels = probabilities.max(0)
    return labels.byte().cpu().numpy(), top.float().cpu().numpy()


def label_free_signals(
    run: SegRun,
    model: Segmenter,
    stage: str,
    previous: tuple[str, Segmenter] | None = None,
    compare: dict[str, Segmenter] | None = None,
) -> dict[str, Any]:
    """The signals of ``model`` on the run's held-out target frames; panels beside.

    ``previous``: (stage name, model) for the agreement; ``compare``: models drawn in the panels
    between the frame and this model (e.g. source only).
    """
    dataset = run.signal_set
    if dataset is None:
        raise DataError(
            "label-free signals need held-out target frames or a labelled evaluation set"
        )
    names = run.space.classes
    num_classes = len(names)
    was_training = model.training
    model.eval()
    for other in (compare or {}).values():
        other.eval()
    if previous is not None:
        previous[1].eval()
    counts = SignalCounts(num_classes)
    agree = 0
    agree_compare = dict.fromkeys(compare or {}, 0)
    folder = run.out_dir / "eval" / stage / "label_free_panels"
    for index, item in enumerate(dataset.items):
        image = read_image(item.image)
        labels, top = _frame_outputs(run, model, image)
        counts.add_probabilities(labels, top)
        if previous is not None:
            agree += int((_frame_outputs(run, previous[1], image)[0] == labels).sum())
        others = {name: _frame_outputs(run, m, image)[0] for name, m in (compare or {}).items()}
        for name, other in others.items():
            agree_compare[name] += int((other == labels).sum())
        if index < run.config.eval_panels:
            columns = [run.evaluator.resized(image), *map(run.space.colorize, others.values())]
            columns.append(run.space.colorize(labels))
            write_png(folder / f"{item.image.parent.name}_{item.image.stem}.png", panel(columns))
    model.train(was_training)
    pixels = max(counts.pixels, 1)
    signals = stage_signals(
        counts,
        run.evaluator.source_class_shares(),
        names,
        (dataset.name, "frames", len(dataset)),
        (previous[0], agree / pixels) if previous is not None else None,
    )
    for name, count in agree_compare.items():
        signals[f"agreement_with_{name.replace(' ', '_')}"] = count / pixels
    return signals


def label_free_table(rows: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per stage; the class shares of the classes any row predicts."""
    first = next(iter(rows.values()))
    classes = [
        name
        for name in first["class_shares"]
        if first["source_class_shares"][name] > 0.005
        or any(r["class_shares"][name] > 0.005 for r in rows.values())
    ]
    header = [
        "Model",
        "mean confidence",
        "low-confidence share",
        "class-share distance to source labels",
        "agreement with previous stage",
        *[f"{c} share" for c in classes],
    ]
    lines = [
        f"Label-free signals on {first['frames']} held-out frames of {first['dataset']} "
        "(no labels: not accuracy; see the README).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        "| source labels | | | | | "
        + " | ".join(_pct(first["source_class_shares"][c]) for c in classes)
        + " |",
    ]
    for name, signals in rows.items():
        agreement = signals["agreement_with_previous"]
        cells = [
            _pct(signals["mean_confidence"]),
            _pct(signals["low_confidence_share"]),
            _pct(signals["class_share_distance"]),
            "—" if agreement is None else f"{_pct(agreement)} (vs {signals['previous_stage']})",
            *[_pct(signals["class_shares"][c]) for c in classes],
        ]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines) + "\n"


def label_free_csv(rows: dict[str, dict[str, Any]]) -> str:

    first = next(iter(rows.values()))
    classes = list(first["class_shares"])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "model",
            "frames",
            "mean_confidence",
            "low_confidence_share",
            "class_share_distance",
            "agreement_with_previous",
            "previous_stage",
            *[f"share_{c}" for c in classes],
        ]
    )
    for name, s in rows.items():
        agreement = s["agreement_with_previous"]
        writer.writerow(
            [
                name,
                s["frames"],
                f"{s['mean_confidence']:.4f}",
                f"{s['low_confidence_share']:.4f}",
                f"{s['class_share_distance']:.4f}",
                "" if agreement is None else f"{agreement:.4f}",
                s["previous_stage"] or "",
                *[f"{s['class_shares'][c]:.4f}" for c in classes],
            ]
        )
    return buffer.getvalue()


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"
