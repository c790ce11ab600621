"""Videos as an unlabelled domain: ``video:PATH`` frames, sampled once into a run folder.

PATH is a video file, a folder searched recursively for videos, or a text file listing videos
(one per line, relative to the list file; ``#`` comments). Frames are sampled at a rate in frames
per second of video, near-duplicates of the last kept frame (a car waiting at a light) are dropped
by a cheap test — the mean absolute difference of 32x18 grey thumbnails — frames are resized to
the run's width and written as JPEG (quality 95) under ``OUT/target_frames/`` with
``index.csv`` (frame file, source video, frame number, timestamp) and ``manifest.json`` (the
sampling, one report per video). A finished extraction is reused while its videos and sampling
are unchanged; an interrupted one is discarded, never half-used.

An unreadable, empty or truncated video is reported by name and skipped; only a PATH with no
readable video at all is an error.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import queue
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from cycada.atomic import process_alive, write_json_atomic, write_text_atomic
from cycada.errors import DataError

VIDEO_SUFFIXES = (
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".wmv", ".flv", ".3gp",
)  # fmt: skip
THUMBNAIL = (32, 18)  # width, height of the near-duplicate test
JPEG_QUALITY = 95
MANIFEST = "manifest.json"
INDEX = "index.csv"


@dataclass(frozen=True)
class FrameSampling:
    """How frames are taken from videos.

    ``fps``: frames kept per second of video; a rate at or above a video's own (``inf``) keeps
    every frame. ``max_frames``: cap over all videos (0 = none); rates are lowered evenly so the
    cap spreads over the whole fleet instead of filling up on the first videos. ``dedup``: a
    frame whose thumbnail differs from the last kept one by less than this mean absolute grey
    level (0-255) is dropped (0 keeps all). ``width``: resize width (0 = as decoded).
    """

    fps: float = 1.0
    max_frames: int = 0
    dedup: float = 1.5
    width: int = 0

    def __post_init__(self) -> None:
        if not self.fps > 0:
            raise DataError(f"target frame rate {self.fps} must be > 0 (frames per second)")
        if self.max_frames < 0:
            raise DataError(f"target max frames {self.max_frames} must be >= 0 (0 = no cap)")
        if self.dedup < 0:
            raise DataError(f"near-duplicate threshold {self.dedup} must be >= 0 (0 = off)")


@dataclass
class VideoReport:
    """What extraction did with one video."""

    path: str
    status: str = "ok"  # ok | skipped
    reason: str = ""
    fps: float = 0.0
    declared_frames: int = 0
    decoded: int = 0
    sampled: int = 0
    duplicates: int = 0
    kept: int = 0


@dataclass
class FrameIndex:
    """The extracted frames of a ``video:`` domain."""

    root: Path
    frames: list[Path]
    videos: list[VideoReport] = field(default_factory=list)

    @property
    def skipped(self) -> list[VideoReport]:
        return [v for v in self.videos if v.status != "ok"]


def list_videos(spec: str | Path) -> list[Path]:
    """The videos PATH names (see the module docstring), sorted; missing paths are errors."""
    path = Path(spec).expanduser()
    if path.is_dir():
        videos = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
        if not videos:
            raise DataError(
                f"video folder {path} holds no video files ({', '.join(VIDEO_SUFFIXES)})"
            )
        return videos
    if not path.is_file():
        raise DataError(f"video path {path} does not exist (expected a video, folder or list)")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return [path]
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(
            f"{path} is neither a video ({', '.join(VIDEO_SUFFIXES)}) nor a text list of videos"
        ) from None
    videos = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            entry = Path(line).expanduser()
            videos.append(entry if entry.is_absolute() else path.parent / entry)
    if not videos:
        raise DataError(f"video list {path} names no videos")
    return videos


def _rate_and_count(capture: cv2.VideoCapture) -> tuple[float, int]:
    """(frames per second, declared frame count) from an open capture's container."""
    fps = capture.get(cv2.CAP_PROP_FPS)
    count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    fps = round(fps, 3) if math.isfinite(fps) and 0 < fps < 1000 else 25.0
    return fps, int(count) if math.isfinite(count) and count > 0 else 0


def _probe(path: Path) -> tuple[float, int]:
    """(frames per second, declared frame count) of a video file; (0, 0) if unreadable."""
    capture = cv2.VideoCapture(str(path))
    try:
        return _rate_and_count(capture) if capture.isOpened() else (0.0, 0)
    finally:
        capture.release()


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """The small grey image of a BGR frame that the near-duplicate test compares."""
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    return cv2.resize(grey, THUMBNAIL, interpolation=cv2.INTER_AREA).astype(np.float32)


def near_duplicate(thumb: np.ndarray, last: np.ndarray | None, threshold: float) -> bool:
    """True when ``thumb`` differs from the last kept frame's by less than ``threshold`` grey
    levels on average (0 turns the test off)."""
    return last is not None and float(np.abs(thumb - last).mean()) < threshold


def _resize(frame: np.ndarray, width: int) -> np.ndarray:
    """Exact halvings (bilinear at exactly 2x averages 2x2 blocks: INTER_AREA's result), then
    one bilinear step of less than 2x: about 3x cheaper than INTER_AREA from 1280x720 to 512
    wide, which keeps extraction close to the decoder's own rate."""
    height, old_width = frame.shape[:2]
    if width <= 0 or width == old_width:
        return frame
    while frame.shape[1] // 2 >= width:
        half = (frame.shape[1] // 2, frame.shape[0] // 2)
        frame = cv2.resize(frame, half, interpolation=cv2.INTER_LINEAR)
    size = (width, max(1, round(height * width / old_width)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)


def _prepare(frame: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize, thumbnail and JPEG-encode on the pool (OpenCV releases the GIL for all three):
    one hand-off per frame. A frame found to be a near-duplicate wastes its encoding, which
    costs less than a second hand-off for every frame kept."""
    small = _resize(frame, width)
    ok, data = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise DataError("cannot encode a frame as JPEG")
    return thumbnail(small), data


def _write_file(path: Path, data: np.ndarray) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


class _Extractor:
    """One video: decode on the calling thread, resize/thumbnail and write on a shared pool,
    decide near-duplicates in frame order on a second thread. A bounded queue between them
    keeps memory flat however fast the decoder runs."""

    def __init__(
        self,
        path: Path,
        folder: Path,
        rate: float,
        sampling: FrameSampling,
        pool: ThreadPoolExecutor,
        on_frame: Callable[[], None],
        on_open: Callable[[float], None],
        depth: int,
    ):
        self.path, self.folder, self.rate = path, folder, rate
        self.sampling, self.pool, self.on_frame, self.on_open = sampling, pool, on_frame, on_open
        self.pending: queue.Queue = queue.Queue(maxsize=depth)
        self.rows: list[tuple[str, int, float]] = []
        self.write_error: BaseException | None = None

    def run(self, report: VideoReport) -> list[tuple[str, int, float]]:
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            report.status = "skipped"
            report.reason = "missing" if not self.path.exists() else "cannot be opened"
            return []
        if not report.fps:  # not probed beforehand (no frame cap to plan)
            report.fps, report.declared_frames = _rate_and_count(capture)
            self.on_open(report.declared_frames / report.fps * min(self.rate, report.fps))
        keeper = threading.Thread(target=self._keep, args=(report,), daemon=True)
        keeper.start()
        period = 0.0 if math.isinf(self.rate) else 1.0 / self.rate
        next_time, number = 0.0, 0
        try:
            while self.write_error is None and capture.grab():
                time_s = number / report.fps
                if time_s + 1e-6 >= next_time:
                    ok, frame = capture.retrieve()
                    if not ok:
                        break
                    work = self.pool.submit(_prepare, frame, self.sampling.width)
                    self.pending.put((number, time_s, work))
                    report.sampled += 1
                    while period and next_time <= time_s + 1e-6:
                        next_time += period
                number += 1
        except cv2.error as error:
            report.status, report.reason = "skipped", f"decoder error at frame {number}: {error}"
        finally:
            capture.release()
            self.pending.put(None)
            keeper.join()
        if self.write_error is not None:
            raise self.write_error
        report.decoded = number
        if report.status == "ok" and number == 0:
            report.status, report.reason = "skipped", "no frame could be decoded"
        tolerance = max(2, report.declared_frames // 50)
        if report.status == "ok" and report.declared_frames - number > tolerance:
            report.status = "skipped"
            report.reason = f"truncated: {number} of {report.declared_frames} frames decode"
        if report.status != "ok":
            shutil.rmtree(self.folder, ignore_errors=True)
            report.kept = 0
            return []
        return self.rows

    def _keep(self, report: VideoReport) -> None:
        """Frame order: near-duplicate test against the last kept frame, then the write."""
        last: np.ndarray | None = None
        while (item := self.pending.get()) is not None:
            if self.write_error is not None:
                continue  # drain so the decoder never blocks on a full queue
            number, time_s, work = item
            try:
                thumb, data = work.result()
                self.on_frame()
                if near_duplicate(thumb, last, self.sampling.dedup):
                    report.duplicates += 1
                    continue
                last = thumb
                name = f"{number:07d}.jpg"
                if not self.rows:
                    self.folder.mkdir(parents=True, exist_ok=True)
                _write_file(self.folder / name, data)
                self.rows.append((f"{self.folder.name}/{name}", number, round(time_s, 3)))
                report.kept += 1
            except BaseException as error:  # re-raised on the decoding thread
                self.write_error = error


def _source_fingerprint(videos: list[Path], sampling: FrameSampling) -> str:
    parts = [asdict(sampling)]
    for video in videos:
        try:
            stat = video.stat()
            parts.append([str(video.resolve()), stat.st_size, stat.st_mtime_ns])
        except OSError:
            parts.append([str(video), None, None])
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def load_frame_index(root: Path) -> FrameIndex:
    manifest = json.loads((root / MANIFEST).read_text())
    with open(root / INDEX, newline="", encoding="utf-8") as handle:
        frames = [root / "images" / row["frame"] for row in csv.DictReader(handle)]
    videos = [VideoReport(**v) for v in manifest["videos"]]
    return FrameIndex(root, frames, videos)


def extract_frames(
    spec: str,
    root: Path,
    sampling: FrameSampling,
    workers: int = 0,
    log: Callable[[str], None] = print,
    quiet: bool = False,
) -> FrameIndex:
    """Frames of ``video:spec`` under ``root`` (reused when the videos and sampling match)."""
    videos = list_videos(spec)
    fingerprint = _source_fingerprint(videos, sampling)
    manifest_path = root / MANIFEST
    if manifest_path.is_file():
        try:
            if json.loads(manifest_path.read_text()).get("fingerprint") == fingerprint:
                index = load_frame_index(root)
                log(f"target frames: {len(index.frames)} already extracted in {root}")
                return index
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable manifest: extract again below
    for stale in root.parent.glob(f".{root.name}.partial-*"):  # left by a killed extraction
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    partial = root.with_name(f".{root.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        index = _extract(videos, partial, sampling, fingerprint, spec, workers, log, quiet)
        shutil.rmtree(root, ignore_errors=True)
        os.replace(partial, root)
    except OSError as error:  # a full disk, a read-only run folder: nothing half-written stays
        raise DataError(f"cannot write the frames of video:{spec} under {root}: {error}") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    index.root = root
    index.frames = [root / frame.relative_to(partial) for frame in index.frames]
    return index


def _sampling_rates(
    videos: list[Path], reports: list[VideoReport], sampling: FrameSampling
) -> tuple[list[float], float]:
    """Frames per second to keep of each video, and the frames expected (0 = unknown).

    With a cap, every video is probed first so the cap spreads over all of them; without one,
    each video reads its rate when it opens (one open per video, not two).
    """
    rates = [sampling.fps] * len(videos)
    if not sampling.max_frames:
        return rates, 0.0
    for report, video in zip(reports, videos):
        report.fps, report.declared_frames = _probe(video)
    rates = [min(sampling.fps, r.fps) if r.fps else sampling.fps for r in reports]
    counts = [r.declared_frames / r.fps * rate if r.fps else 0 for r, rate in zip(reports, rates)]
    if sum(counts) > sampling.max_frames:
        rates = [rate * sampling.max_frames / sum(counts) for rate in rates]
    return rates, min(sum(counts), sampling.max_frames)


def _cap(rows: list[tuple], max_frames: int, images: Path) -> list[tuple]:
    """At most ``max_frames`` rows, evenly spread; the frames left out are deleted."""
    if not max_frames or len(rows) <= max_frames:
        return rows
    keep = set(np.linspace(0, len(rows) - 1, max_frames).round().astype(int))
    for position, row in enumerate(rows):
        if position not in keep:
            (images / row[0]).unlink()
    return [row for position, row in enumerate(rows) if position in keep]


def _write_index(
    out: Path,
    rows: list[tuple],
    reports: list[VideoReport],
    sampling: FrameSampling,
    fingerprint: str,
    spec: str,
) -> None:
    """``index.csv`` (a row per frame) and ``manifest.json`` (sampling, a report per video)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["frame", "video", "frame_number", "time_s"])
    writer.writerows(rows)
    write_text_atomic(out / INDEX, buffer.getvalue())
    write_json_atomic(
        out / MANIFEST,
        {
            "what": f"frames of video:{spec} (the unlabelled target domain)",
            "fingerprint": fingerprint,
            # strict JSON: every frame is written as "all", not as Infinity
            "sampling": {
                **asdict(sampling),
                "fps": "all" if math.isinf(sampling.fps) else sampling.fps,
            },
            "frames": len(rows),
            "videos": [asdict(r) for r in reports],
        },
    )


def _extract(
    videos: list[Path],
    out: Path,
    sampling: FrameSampling,
    fingerprint: str,
    spec: str,
    workers: int,
    log: Callable[[str], None],
    quiet: bool,
) -> FrameIndex:
    # tqdm: only when a bar is shown
    from tqdm import tqdm

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = workers or max(1, cpus or 1)
    reports = [VideoReport(str(v)) for v in videos]
    rates, expected = _sampling_rates(videos, reports, sampling)
    (out / "images").mkdir(parents=True)
    bar = tqdm(
        total=round(expected) or None,
        desc="target frames",
        unit="frame",
        dynamic_ncols=True,
        mininterval=1.0,
        disable=quiet,
    )
    lock = threading.Lock()

    def tick() -> None:
        with lock:
            bar.update()

    def opened(frames: float) -> None:
        with lock:
            bar.total = (bar.total or 0) + round(frames)
            bar.refresh()

    rows_per_video: list[list] = [[] for _ in videos]
    with (
        ThreadPoolExecutor(max_workers=workers) as frame_pool,
        ThreadPoolExecutor(max_workers=min(workers, len(videos))) as video_pool,
    ):

        def one(position: int) -> None:
            report, video = reports[position], videos[position]
            folder = out / "images" / f"{position:04d}_{_safe(video.stem)}"
            extractor = _Extractor(
                video, folder, rates[position], sampling, frame_pool, tick, opened, 4 * workers
            )
            try:
                rows_per_video[position] = extractor.run(report)
            except (DataError, cv2.error) as error:  # one bad video must not stop the others
                report.status, report.reason = "skipped", f"{type(error).__name__}: {error}"
                shutil.rmtree(folder, ignore_errors=True)

        list(video_pool.map(one, range(len(videos))))
    bar.close()
    rows = [
        (frame, str(videos[i]), number, time_s)
        for i, video_rows in enumerate(rows_per_video)
        for frame, number, time_s in video_rows
    ]
    rows = _cap(rows, sampling.max_frames, out / "images")
    for report in reports:
        if report.status != "ok":
            log(f"target frames: skipped {report.path}: {report.reason or 'cannot be opened'}")
    if not rows:
        reasons = "; ".join(f"{Path(r.path).name}: {r.reason}" for r in reports[:5])
        raise DataError(f"video:{spec}: no readable video frames ({reasons})")
    _write_index(out, rows, reports, sampling, fingerprint, spec)
    kept = sum(r.kept for r in reports)
    ok = sum(r.status == "ok" for r in reports)
    log(
        f"target frames: {len(rows)} from {ok} of {len(reports)} videos "
        f"({sum(r.duplicates for r in reports)} near-duplicates dropped"
        + (f", {kept - len(rows)} over the cap" if kept > len(rows) else "")
        + ")"
    )
    frames = [out / "images" / row[0] for row in rows]
    return FrameIndex(out, frames, reports)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]
