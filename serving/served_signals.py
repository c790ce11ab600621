"""A segmentation model's label-free signals on the frames it serves, as Triton custom metrics.

The Python backend publishes them beside Triton's own metrics (``:8002/metrics``), labelled by
model and version (and class): counters of frames, pixels, summed confidence, low-confidence
pixels and pixels per class (``cycada.signals`` names them), a histogram of each frame's mean
confidence, and the baseline recorded at export as gauges. Each instance's series carry its own
``stub`` label (instance name and process id): Triton 2.51 frees a metric when the first of the
stubs sharing its labels lets go of it, and the other stub would then write into freed memory
(the server aborts when a model reloads). Counters add over stubs and replicas, so Prometheus
(``increase(...[5m])``) and ``cycada monitor`` compute any window from them.

Under a native profile (onnxruntime, tensorrt) ``segment`` runs no Python and publishes nothing;
``segment_encoded`` stays a Python model in every profile, so clients that send encoded frames
(``segment-video --encoded``) are counted there.

Frames that are all zeros (Triton's warm-up request, a covered lens) are not counted.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cycada import signals
from cycada.signals import SignalCounts


def _numpy(array: Any) -> np.ndarray:
    return array.cpu().numpy() if hasattr(array, "cpu") else np.asarray(array)


def _is_blank(images: Any) -> bool:
    return not bool(images.any())


class ServedSignals:
    """The metric objects of one model version in one instance (``pb_utils`` from the stub)."""

    def __init__(
        self,
        pb_utils: Any,
        model: str,
        version: str,
        instance: str,
        class_names: list[str],
        baseline: dict[str, Any] | None,
    ):
        counter, gauge = pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.GAUGE
        labels = {"model": model, "version": version, "stub": f"{instance}:{os.getpid()}"}
        self.classes = class_names

        def family(name: str, text: str, kind: Any) -> Any:
            return pb_utils.MetricFamily(name=name, description=text, kind=kind)

        self._families = {
            signals.FRAMES: family(signals.FRAMES, "frames segmented", counter),
            signals.PIXELS: family(signals.PIXELS, "pixels segmented", counter),
            signals.CONFIDENCE_SUM: family(
                signals.CONFIDENCE_SUM, "winning-class probability summed over pixels", counter
            ),
            signals.LOW_PIXELS: family(
                signals.LOW_PIXELS, "pixels whose winning probability is below 0.5", counter
            ),
            signals.CLASS_PIXELS: family(signals.CLASS_PIXELS, "pixels per class", counter),
            signals.FRAME_CONFIDENCE: family(
                signals.FRAME_CONFIDENCE,
                "each frame's mean winning-class probability",
                pb_utils.MetricFamily.HISTOGRAM,
            ),
        }
        self._metrics = {
            name: family.Metric(labels=labels)
            for name, family in self._families.items()
            if name not in (signals.CLASS_PIXELS, signals.FRAME_CONFIDENCE)
        }
        self._per_class = [
            self._families[signals.CLASS_PIXELS].Metric(labels={**labels, "class": name})
            for name in class_names
        ]
        self._frame_confidence = self._families[signals.FRAME_CONFIDENCE].Metric(
            labels=labels, buckets=signals.FRAME_CONFIDENCE_BUCKETS
        )
        self._baseline: list[Any] = []
        if baseline:
            self._publish_baseline(pb_utils, family, gauge, labels, baseline)

    def _publish_baseline(self, pb_utils, family, gauge, labels, baseline) -> None:
        texts = {
            signals.BASELINE_CONFIDENCE: "mean confidence at export (held-out target frames)",
            signals.BASELINE_LOW: "low-confidence share at export",
            signals.BASELINE_FRAMES: "frames the export's baseline was measured on",
            signals.BASELINE_CLASS: "class share at export",
        }
        values = {
            signals.BASELINE_CONFIDENCE: baseline["mean_confidence"],
            signals.BASELINE_LOW: baseline["low_confidence_share"],
            signals.BASELINE_FRAMES: baseline["frames"],
        }
        for name, text in texts.items():
            self._families[name] = family(name, text, gauge)
        for name, value in values.items():
            metric = self._families[name].Metric(labels=labels)
            metric.set(float(value))
            self._baseline.append(metric)
        for name in self.classes:
            metric = self._families[signals.BASELINE_CLASS].Metric(labels={**labels, "class": name})
            metric.set(float(baseline["class_shares"].get(name, 0.0)))
            self._baseline.append(metric)

    def observe(self, served: list[tuple[Any, Any, Any]]) -> None:
        """Count the frames of one ``execute``: (input images, labels, confidence) per request."""
        counts = SignalCounts(len(self.classes))
        frame_confidence: list[np.ndarray] = []
        for images, labels, confidence in served:
            if _is_blank(images):
                continue
            labels, confidence = _numpy(labels), _numpy(confidence)
            counts.add_served(labels, confidence)
            frame_confidence.append(signals.frame_mean_confidence(confidence))
        if not counts.frames:
            return
        self._metrics[signals.FRAMES].increment(float(counts.frames))
        self._metrics[signals.PIXELS].increment(float(counts.pixels))
        self._metrics[signals.CONFIDENCE_SUM].increment(counts.confidence_sum)
        self._metrics[signals.LOW_PIXELS].increment(float(counts.low_pixels))
        for metric, pixels in zip(self._per_class, counts.class_pixels):
            if pixels:
                metric.increment(float(pixels))
        for value in np.concatenate(frame_confidence):
            self._frame_confidence.observe(float(value))

    def close(self) -> None:
        """Metrics go before their families (the stub refuses the other order)."""
        self._metrics.clear()
        self._per_class.clear()
        self._baseline.clear()
        self._frame_confidence = None
        self._families.clear()
