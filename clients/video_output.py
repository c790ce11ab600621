"""segment-video's output, durable while it is written, so a killed run resumes where it stopped.

Frames go into parts (``.OUT.parts/part-000000.mp4``, ...). Every second the part being
written is sealed: its MP4 index written and its frame count read back, the CSV flushed to the
disk, and the progress record (``.OUT.progress.json``) replaced atomically: the parts, the frames
they hold, the last source frame, the CSV's length and the options that shape the output. A
``kill -9`` loses at most the part being written. ``--resume`` checks the options, drops what
the record does not hold (a half-written part, CSV rows and label images after its last frame)
and continues. At the end the parts are joined into OUT, replaced atomically (a failed join
leaves the OUT before), and once the source is done the parts go.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cycada.atomic import atomic_path, fsync_file, write_json_atomic
from cycada.errors import DataError, OutputError

PART_SECONDS = 1.0  # how much work a kill -9 can lose


def output_shape(options: Any) -> dict[str, Any]:
    """The options that shape what is written: a resumed run must use the same."""
    return {
        "model": options.model,
        "encoded": options.encoded,
        "width": options.width,
        "alpha": options.alpha,
        "legend": options.legend,
        "translated": options.translate_model,
        "jpeg_quality": options.jpeg_quality,
        "model_version": options.model_version,
        "labels_dir": str(options.labels_dir) if options.labels_dir else None,
        "csv": str(options.csv_path) if options.csv_path else None,
    }


@dataclass
class Progress:
    """What of an output is on the disk for good."""

    source: str
    shape: dict[str, Any]
    parts: list[list] = field(default_factory=list)  # [file name, frames]
    frames_written: int = 0
    last_frame: int = -1
    csv_bytes: int | None = None  # None: a record of an older cycada (CSV appended as it is)
    complete: bool = False  # the source was read to its end


def frames_in(path: Path) -> int:
    """Frames an MP4 holds, read from its index (0 when it cannot be opened)."""
    capture = cv2.VideoCapture(str(path))
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
    capture.release()
    return count


class DurableOutput:
    """The parts folder, the progress record and the part being written of one output."""

    def __init__(self, out: Path, source: str, fps: float, options: Any):
        self.out, self.fps = out, fps
        self.parts_dir = out.with_name(f".{out.stem}.parts")
        self.record = out.with_name(f".{out.stem}.progress.json")
        self.progress = Progress(str(source), output_shape(options))
        self.part_seconds = options.part_seconds
        self.video: cv2.VideoWriter | None = None
        self.part: Path | None = None
        self.part_frames = 0
        self.part_started = 0.0

    # -- starting ---------------------------------------------------------------------------
    def start(self, resume: bool) -> Progress:
        """Prepare for writing; with ``resume``, the progress an earlier run left (its parts
        checked, the rest removed). Returns what is already durable."""
        previous = self._read() if resume else None
        if previous is None:  # the parts folder is made with the first part
            shutil.rmtree(self.parts_dir, ignore_errors=True)
            self.record.unlink(missing_ok=True)
            return self.progress
        if previous.source != self.progress.source:
            raise DataError(
                f"--resume: {self.out} was made from {previous.source}, not {self.progress.source}"
            )
        changed = [
            f"{key} {previous.shape.get(key)!r} (now {value!r})"
            for key, value in self.progress.shape.items()
            if key in previous.shape and previous.shape[key] != value
        ]
        if changed:
            raise DataError(
                f"--resume: {self.out} was made with other options: {'; '.join(changed)}; "
                "resume with the same options, or run again without --resume"
            )
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        kept = {name for name, _ in previous.parts}
        for path in self.parts_dir.iterdir():  # the part being written when it was killed
            if path.name not in kept:
                path.unlink()
        previous.shape = self.progress.shape
        self.progress = previous
        return previous

    def _read(self) -> Progress | None:
        if not self.record.exists():
            if self.out.exists():
                raise DataError(
                    f"--resume: {self.out} has no readable progress record ({self.record.name}); "
                    "remove it or run without --resume"
                )
            return None
        try:
            recorded = json.loads(self.record.read_text())
        except (OSError, ValueError):
            raise DataError(
                f"--resume: {self.out} has no readable progress record ({self.record.name}); "
                "remove it or run without --resume"
            ) from None
        if "parts" not in recorded:  # an older cycada's: its output is the first part
            self.parts_dir.mkdir(parents=True, exist_ok=True)
            count = frames_in(self.out) if self.out.exists() else 0
            parts = []
            if count:
                os.replace(self.out, self.parts_dir / "part-000000.mp4")
                parts = [["part-000000.mp4", count]]
            recorded = {
                "source": recorded.get("source", ""),
                "shape": {},
                "parts": parts,
                "frames_written": count,
                "last_frame": int(recorded.get("last_frame", count - 1)),
            }
        known = {f.name for f in dataclasses.fields(Progress)}
        return Progress(**{k: v for k, v in recorded.items() if k in known})

    # -- writing ----------------------------------------------------------------------------
    def write(self, frame: np.ndarray) -> None:
        if self.video is None:
            self.parts_dir.mkdir(parents=True, exist_ok=True)
            self.part = self.parts_dir / f"part-{len(self.progress.parts):06d}.mp4"
            size = (frame.shape[1], frame.shape[0])
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            self.video = cv2.VideoWriter(str(self.part), fourcc, self.fps, size)
            if not self.video.isOpened():
                raise DataError(f"cannot write video {self.part} (OpenCV has no MP4 encoder)")
            self.part_frames, self.part_started = 0, time.monotonic()
        if self.video.write(frame) is False:  # OpenCV reports a failed write only this way
            raise OutputError(
                f"cannot write video {self.out}: the encoder failed at frame "
                f"{self.progress.frames_written + self.part_frames + 1} (a full disk or a file "
                "size limit)"
            )
        self.part_frames += 1

    def due(self) -> bool:
        return self.video is not None and time.monotonic() - self.part_started >= self.part_seconds

    def seal(self, last_frame: int, csv_file=None) -> None:
        """Make what was written durable: the part closed and checked, the CSV on the disk,
        then the record that names them."""
        if self.video is None:
            return
        self.video.release()
        self.video = None
        count = frames_in(self.part)
        if count != self.part_frames:
            raise OutputError(
                f"cannot write video {self.out}: a part holds {count} of the {self.part_frames} "
                "frames written (a full disk or a file size limit)"
            )
        fsync_file(self.part)
        if csv_file is not None:
            csv_file.flush()
            os.fsync(csv_file.fileno())
            self.progress.csv_bytes = csv_file.tell()
        self.progress.parts.append([self.part.name, count])
        self.progress.frames_written += count
        self.progress.last_frame = last_frame
        write_json_atomic(self.record, dataclasses.asdict(self.progress))

    def abandon(self) -> None:
        """The part being written failed: it is not kept."""
        if self.video is not None:
            self.video.release()
            self.video = None
        if self.part is not None and self.part.name not in {n for n, _ in self.progress.parts}:
            self.part.unlink(missing_ok=True)

    # -- finishing --------------------------------------------------------------------------
    def finish(self, complete: bool) -> bool:
        """Join the durable parts into OUT (atomically); with ``complete`` (the source read to
        its end) remove them. False when there is no output."""
        parts = [self.parts_dir / name for name, _ in self.progress.parts]
        if parts:
            with atomic_path(self.out) as tmp:
                joined = tmp.with_suffix(".mp4")
                try:
                    self._join(parts, joined)
                    os.replace(joined, tmp)
                finally:
                    joined.unlink(missing_ok=True)
        if complete:
            self.progress.complete = True
            write_json_atomic(self.record, dataclasses.asdict(self.progress))
        if complete or not parts:  # nothing to resume from: no folder left beside OUT
            shutil.rmtree(self.parts_dir, ignore_errors=True)
        return self.out.exists()

    def _join(self, parts: list[Path], target: Path) -> None:
        writer = None
        written = 0
        try:
            for part in parts:
                capture = cv2.VideoCapture(str(part))
                while capture.grab():
                    ok, frame = capture.retrieve()
                    if not ok:
                        break
                    if writer is None:
                        size = (frame.shape[1], frame.shape[0])
                        fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                        writer = cv2.VideoWriter(str(target), fourcc, self.fps, size)
                    if writer.write(frame) is False:
                        raise OutputError(f"cannot write video {self.out} (a full disk?)")
                    written += 1
                capture.release()
        finally:
            if writer is not None:
                writer.release()
        if frames_in(target) != self.progress.frames_written or written == 0:
            raise OutputError(
                f"cannot write video {self.out}: it holds {frames_in(target)} of the "
                f"{self.progress.frames_written} frames written (a full disk or a file size limit)"
            )
