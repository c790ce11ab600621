"""`segment-video --collect DIR`: keep the frames the served model is unsure of, to adapt again.

A frame is kept when its mean confidence (the winning class's probability, averaged over its
pixels) is below ``below``, at most ``rate`` frames per second of footage, and not a
near-duplicate of the last frame kept (the test ``video:`` targets use). Each frame is a JPEG at
its full size under ``DIR/<video>/``; ``DIR/collected.csv`` names its video, frame number,
timestamp, mean confidence and the model version that answered. ``cycada train seg --target
folder:DIR`` takes the folder as it is.

Collecting never stops the segmentation: a write that fails (a full disk) is reported in one
line, leaves no partial file, and collection stops while the video goes on.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cycada.errors import DataError
from cycada.signals import frame_mean_confidence
from cycada.training.segmentation.videos import JPEG_QUALITY, near_duplicate, thumbnail

LOGGER = logging.getLogger("cycada.clients")
CSV_NAME = "collected.csv"
COLUMNS = ["file", "video", "frame", "time_s", "mean_confidence", "model_version"]
DEDUP = 1.5  # grey levels, as FrameSampling.dedup


@dataclass(frozen=True)
class CollectOptions:
    folder: Path
    below: float = 0.6  # mean confidence under which a frame is kept
    rate: float = 1.0  # at most this many frames kept per second of footage
    dedup: float = DEDUP

    def __post_init__(self) -> None:
        if not 0.0 <= self.below <= 1.0:
            raise DataError(f"--collect-below {self.below}: expected a confidence in 0..1")
        if self.rate <= 0:
            raise DataError(f"--collect-rate {self.rate}: expected frames per second above 0")
        if self.folder.exists() and not self.folder.is_dir():
            raise DataError(f"--collect {self.folder}: expected a folder, found a file")


def video_name(source: str) -> str:
    """A folder name for the footage: the file's stem, ``camera0``, or the stream's path."""
    if source.isdigit():
        return f"camera{source}"
    stem = Path(source.split("?")[0].rstrip("/")).stem or "stream"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)


class Collector:
    """Offered every segmented frame in order; keeps the unsure ones."""

    def __init__(self, options: CollectOptions, source: str, fps: float):
        self.options, self.fps = options, fps or 25.0
        self.video = video_name(source)
        self.kept = self.duplicates = 0
        self.stopped: str | None = None
        self._last_time: float | None = None
        self._last_thumb: np.ndarray | None = None

    def offer(self, index: int, frame_bgr: np.ndarray, confidence: np.ndarray, version: str):
        """Keep frame ``index`` if it qualifies; never raises for a write that fails."""
        if self.stopped is not None:
            return
        mean = float(frame_mean_confidence(confidence[None])[0])
        time_s = index / self.fps
        if mean >= self.options.below:
            return
        if self._last_time is not None and time_s - self._last_time < 1.0 / self.options.rate:
            return
        thumb = thumbnail(frame_bgr)
        if near_duplicate(thumb, self._last_thumb, self.options.dedup):
            self.duplicates += 1
            return
        try:
            self._write(index, frame_bgr, time_s, mean, version)
        except OSError as exc:
            self.stopped = f"cannot write to {self.options.folder}: {exc.strerror or exc}"
            LOGGER.warning(
                f"segment-video: collecting stopped ({self.stopped}); the segmentation goes on"
            )
            return
        self._last_time, self._last_thumb = time_s, thumb
        self.kept += 1

    def _write(self, index: int, frame: np.ndarray, time_s: float, mean: float, version: str):
        folder = self.options.folder / self.video
        folder.mkdir(parents=True, exist_ok=True)
        ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise OSError(f"cannot encode frame {index} as JPEG")
        path = folder / f"{index:07d}.jpg"
        partial = folder / f".{index:07d}.jpg.partial"  # not an image name: never trained on
        try:
            with open(partial, "wb") as handle:
                handle.write(data.tobytes())
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        table = self.options.folder / CSV_NAME
        new = not table.exists()
        with open(table, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(COLUMNS)
            name = path.relative_to(self.options.folder).as_posix()
            writer.writerow([name, self.video, index, f"{time_s:.3f}", f"{mean:.4f}", version])

    def line(self) -> str:
        text = (
            f"collected {self.kept} frames with mean confidence below {self.options.below:.0%} "
            f"→ {self.options.folder}"
        )
        return f"{text} (stopped: {self.stopped})" if self.stopped else text
