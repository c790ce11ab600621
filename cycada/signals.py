"""The label-free signals of a segmenter, counted the same way in training, at export, in the
server and in the monitor (NumPy only: the Triton Python backend imports it).

Counts add up, so a window is the difference of two readings and replicas add:

- ``frames``, ``pixels``;
- ``confidence_sum``: the winning class's softmax probability summed over pixels (the served
  ``confidence`` output is that probability x 255);
- ``low_pixels``: pixels whose winning probability is below :data:`LOW_CONFIDENCE`;
- ``class_pixels``: pixels predicted as each class.

From them: mean confidence, low-confidence share, class shares, and the total-variation distance
between two class mixes (0 = the same mix, 1 = disjoint). None of these is accuracy (see
``training/segmentation/label_free.py``); they show a shift in what the model sees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LOW_CONFIDENCE = 0.5
# served confidence is round(p x 255): p < 0.5 exactly when the byte is at most 127
LOW_CONFIDENCE_BYTE = 128

# Prometheus names (the Python backend publishes them; ``cycada monitor`` and the alert rules in
# deploy/prometheus read them). Counters carry the labels model and version (class for classes).
FRAMES = "cycada_frames_total"
PIXELS = "cycada_pixels_total"
CONFIDENCE_SUM = "cycada_confidence_sum_total"
LOW_PIXELS = "cycada_low_confidence_pixels_total"
CLASS_PIXELS = "cycada_class_pixels_total"
FRAME_CONFIDENCE = "cycada_frame_confidence"  # histogram of each frame's mean confidence
BASELINE_CONFIDENCE = "cycada_baseline_mean_confidence"
BASELINE_LOW = "cycada_baseline_low_confidence_share"
BASELINE_CLASS = "cycada_baseline_class_share"
BASELINE_FRAMES = "cycada_baseline_frames"
FRAME_CONFIDENCE_BUCKETS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]


def class_share_distance(shares: np.ndarray, reference: np.ndarray) -> float:
    """Total-variation distance between two class mixes: 0 = the same, 1 = disjoint."""
    return float(0.5 * np.abs(np.asarray(shares) - np.asarray(reference)).sum())


def frame_mean_confidence(confidence: np.ndarray) -> np.ndarray:
    """Each frame's mean winning probability from served uint8 confidence (N, H, W)."""
    flat = confidence.reshape(confidence.shape[0], -1)
    return flat.sum(1, dtype=np.float64) / (255.0 * max(flat.shape[1], 1))


@dataclass
class SignalCounts:
    """Additive counts of the signals over some frames (see the module docstring)."""

    classes: int
    frames: int = 0
    pixels: int = 0
    confidence_sum: float = 0.0
    low_pixels: int = 0
    class_pixels: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.class_pixels is None:
            self.class_pixels = np.zeros(self.classes, np.int64)

    def add_served(self, labels: np.ndarray, confidence: np.ndarray) -> None:
        """Add frames of served outputs: labels and uint8 confidence, (N, H, W) each."""
        self.frames += int(labels.shape[0])
        self.pixels += int(labels.size)
        self.confidence_sum += float(confidence.sum(dtype=np.uint64)) / 255.0
        self.low_pixels += int(np.count_nonzero(confidence < LOW_CONFIDENCE_BYTE))
        self.class_pixels += np.bincount(labels.ravel(), minlength=self.classes)[: self.classes]

    def add_probabilities(self, labels: np.ndarray, top: np.ndarray) -> None:
        """Add one frame of training-side outputs: labels and float winning probability."""
        self.frames += 1
        self.pixels += int(labels.size)
        self.confidence_sum += float(top.sum(dtype=np.float64))
        self.low_pixels += int((top < LOW_CONFIDENCE).sum())
        self.class_pixels += np.bincount(labels.ravel(), minlength=self.classes)[: self.classes]

    def minus(self, earlier: SignalCounts) -> SignalCounts:
        """The counts between an earlier reading and this one."""
        return self.plus(earlier, -1)

    def plus(self, other: SignalCounts, sign: int = 1) -> SignalCounts:
        """These counts and ``other``'s added (``sign`` -1: subtracted)."""
        return SignalCounts(
            self.classes,
            self.frames + sign * other.frames,
            self.pixels + sign * other.pixels,
            self.confidence_sum + sign * other.confidence_sum,
            self.low_pixels + sign * other.low_pixels,
            self.class_pixels + sign * other.class_pixels,
        )

    @property
    def mean_confidence(self) -> float:
        return self.confidence_sum / max(self.pixels, 1)

    @property
    def low_confidence_share(self) -> float:
        return self.low_pixels / max(self.pixels, 1)

    @property
    def class_shares(self) -> np.ndarray:
        return self.class_pixels / max(int(self.class_pixels.sum()), 1)


@dataclass(frozen=True)
class Baseline:
    """What a model's signals were on the footage it was adapted to (recorded at export)."""

    mean_confidence: float
    low_confidence_share: float
    class_shares: dict[str, float]
    frames: int
    dataset: str = ""
    stage: str = ""
    source_class_shares: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Baseline:
        return cls(
            float(record["mean_confidence"]),
            float(record["low_confidence_share"]),
            {k: float(v) for k, v in record["class_shares"].items()},
            int(record["frames"]),
            str(record.get("dataset", "")),
            str(record.get("stage", "")),
            {k: float(v) for k, v in record.get("source_class_shares", {}).items()},
        )

    def shares_of(self, classes: Sequence[str]) -> np.ndarray:
        return np.array([self.class_shares.get(name, 0.0) for name in classes])


@dataclass(frozen=True)
class ShiftRule:
    """When a window of served frames is flagged against its baseline (``cycada monitor`` and
    the alert rules in deploy/prometheus use the same numbers; BENCHMARKS.md measures them)."""

    min_frames: int = 50  # fewer frames than this in the window: too few to judge
    confidence_drop: float = 0.10  # mean confidence this far below the baseline's
    low_share_rise: float = 0.15  # low-confidence share this far above the baseline's
    share_distance: float = 0.25  # class-share distance to the baseline's mix above this
    vanished_share: float = 0.02  # a class with at least this share in the baseline ...
    vanished_fraction: float = 0.1  # ... below this fraction of it in the window
    appeared_share: float = 0.05  # a class with under a tenth of this in the baseline, over it


@dataclass(frozen=True)
class WindowReport:
    """One model version's window against its baseline: the numbers and any flags."""

    frames: int
    mean_confidence: float
    low_confidence_share: float
    share_distance: float
    vanished: list[str]
    appeared: list[str]
    flags: list[str]  # the evidence, one line per rule that fired; empty: no shift

    @property
    def judged(self) -> bool:
        return bool(self.frames)

    def as_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "mean_confidence": self.mean_confidence,
            "low_confidence_share": self.low_confidence_share,
            "class_share_distance": self.share_distance,
            "vanished": self.vanished,
            "appeared": self.appeared,
            "shift": bool(self.flags),
            "flags": self.flags,
        }


def stage_signals(
    counts: SignalCounts,
    source_shares: np.ndarray,
    class_names: Sequence[str],
    held_out: tuple[str, str, int],
    previous: tuple[str, float] | None = None,
) -> dict[str, Any]:
    """The label-free signals of a trained stage as ``metrics.json`` records them (both tasks):
    ``held_out`` is (data set, what was counted: "images" or "frames", how many), ``previous``
    the stage before it and the share of outputs the two agree on."""
    shares = counts.class_shares
    dataset, unit, count = held_out
    return {
        "dataset": dataset,
        unit: count,
        "mean_confidence": counts.mean_confidence,
        "low_confidence_share": counts.low_confidence_share,
        "class_share_distance": class_share_distance(shares, source_shares),
        "agreement_with_previous": previous[1] if previous is not None else None,
        "previous_stage": previous[0] if previous is not None else None,
        "class_shares": dict(zip(class_names, map(float, shares))),
        "source_class_shares": dict(zip(class_names, map(float, source_shares))),
    }


def judge_window(
    window: SignalCounts,
    baseline: Baseline,
    classes: Sequence[str],
    rule: ShiftRule = ShiftRule(),
) -> WindowReport:
    """The window's signals beside the baseline's, with a line of evidence per rule that fires
    (no flags while the window holds fewer than ``rule.min_frames`` frames)."""
    shares = window.class_shares
    reference = baseline.shares_of(classes)
    distance = class_share_distance(shares, reference)
    vanished = [
        name
        for name, now, then in zip(classes, shares, reference)
        if then >= rule.vanished_share and now < rule.vanished_fraction * then
    ]
    appeared = [
        name
        for name, now, then in zip(classes, shares, reference)
        if then < rule.appeared_share / 10 and now > rule.appeared_share
    ]
    flags: list[str] = []
    if window.frames >= rule.min_frames:
        confidence, low = window.mean_confidence, window.low_confidence_share
        if confidence < baseline.mean_confidence - rule.confidence_drop:
            flags.append(
                f"mean confidence {confidence:.1%} against {baseline.mean_confidence:.1%} at "
                f"export (more than {rule.confidence_drop:.0%} lower)"
            )
        if low > baseline.low_confidence_share + rule.low_share_rise:
            flags.append(
                f"low-confidence share {low:.1%} against {baseline.low_confidence_share:.1%} "
                f"at export (more than {rule.low_share_rise:.0%} higher)"
            )
        if distance > rule.share_distance:
            flags.append(
                f"class mix {distance:.1%} away from the export's (over {rule.share_distance:.0%})"
            )
        for name in vanished:
            then = baseline.class_shares.get(name, 0.0)
            now = float(shares[list(classes).index(name)])
            flags.append(f"class '{name}' vanished: {now:.2%} of pixels against {then:.1%}")
        for name in appeared:
            then = baseline.class_shares.get(name, 0.0)
            now = float(shares[list(classes).index(name)])
            flags.append(f"class '{name}' appeared: {now:.1%} of pixels against {then:.2%}")
    return WindowReport(
        window.frames,
        window.mean_confidence,
        window.low_confidence_share,
        distance,
        vanished,
        appeared,
        flags,
    )
