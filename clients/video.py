"""`cycada segment-video`: a dashcam video (file, camera, stream) → an overlay video via Triton.

The stages overlap: a reader thread decodes frames; the request threads resize (and JPEG-encode)
them and keep a window of requests in flight on the server; a small pool composes the overlays
and one thread encodes them, in order. Every decodable frame is written
once and in order. The output is written to a hidden file beside OUT and moved onto OUT when
the run ends — also after Ctrl-C or a lost server, so OUT is always a playable MP4 of what was
done (or absent when nothing was).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from cycada.atomic import expect_mp4
from cycada.clients.collect import CollectOptions, Collector
from cycada.clients.interrupt import POLL_SECONDS, DeferredInterrupt
from cycada.clients.triton_client import ModelClient, ordered_map
from cycada.clients.video_output import PART_SECONDS, DurableOutput, Progress
from cycada.errors import DataError, OutputError, ServingError
from cycada.grpc_security import GrpcSecurity
from cycada.training.segmentation.label_spaces import CITYSCAPES19, LabelSpace, space_of

LOGGER = logging.getLogger("cycada.clients")

_END = object()


@dataclass
class VideoOptions:
    urls: list[str] = field(default_factory=lambda: ["127.0.0.1:8001"])
    model: str = "segment"
    encoded: bool = False  # send JPEG frames to the encoded-frame endpoint
    width: int = 512  # frames are resized to this width (aspect kept) for the model
    alpha: float = 0.5
    legend: bool = True
    labels_dir: Path | None = None
    csv_path: Path | None = None
    translate_model: str | None = None  # e.g. translate_t2s: the translated frame beside
    window: int = 8
    jpeg_quality: int = 90
    timeout: float = 30.0
    retry_window: float = 60.0  # seconds a lost server may take to come back
    compression: str | None = None
    shared_memory: bool = False
    progress: bool = True
    security: GrpcSecurity | None = None  # TLS and auth header for a non-loopback server
    resume: bool = False  # continue OUT (and its labels and CSV) from its last frame
    realtime: bool = False  # read a file at its frame rate, as a live camera delivers it
    model_version: str = ""  # pin the segmenting model's version (default: the newest ready)
    part_seconds: float = PART_SECONDS  # the work a kill -9 can lose (clients.video_output)
    collect: CollectOptions | None = None  # keep the frames the model is unsure of


@dataclass
class VideoSummary:
    frames_written: int = 0
    frames_read: int = 0
    corrupt_frames: int = 0
    seconds: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    output: str = ""
    stopped: str = ""  # why it ended early, if it did
    client_cpu_s: float = 0.0  # CPU time of this process (decode, resize, encode, gRPC)
    longest_gap_s: float = 0.0  # the longest wait between two frames written (a stall)
    collected: str = ""  # what --collect kept

    @property
    def fps(self) -> float:
        return self.frames_written / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        text = (
            f"{self.frames_written} frames written ({self.frames_read} read, "
            f"{self.corrupt_frames} corrupt) in {self.seconds:.1f} s: {self.fps:.1f} fps, "
            f"request p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, client CPU "
            f"{1000 * self.client_cpu_s / max(1, self.frames_written):.1f} ms/frame → "
            f"{self.output}"
        )
        text += f"; {self.collected}" if self.collected else ""
        return f"{text}; stopped: {self.stopped}" if self.stopped else text


def open_source(source: str) -> cv2.VideoCapture:
    # FFmpeg's own messages ("moov atom not found") would break the one-line error
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not capture.isOpened():
        raise DataError(
            f"cannot open video '{source}': expected a video file, a camera index or a stream "
            "URL that OpenCV can read"
        )
    return capture


def _read_frames(
    capture: cv2.VideoCapture,
    out: queue.Queue,
    stop: threading.Event,
    counts,
    start: int = 0,
    pace_fps: float = 0.0,
):
    """Reader thread: (frame number in the source, BGR frame) into ``out``; undecodable frames
    are counted and skipped, and keep their number, so the CSV rows and label PNGs of the frames
    after them still name the right source frame. Frames before ``start`` are skipped. With
    ``pace_fps`` frame n is read no sooner than n / pace_fps seconds after the first, as a
    camera delivers them."""
    index = -1
    first = time.perf_counter()
    try:
        while not stop.is_set():
            if not capture.grab():
                break
            index += 1
            if index < start:  # done before a resume: decoded, not sent
                continue
            if pace_fps:
                delay = first + (index - start) / pace_fps - time.perf_counter()
                if delay > 0:
                    stop.wait(delay)
            ok, frame = capture.retrieve()
            if not ok or frame is None or frame.size == 0:
                counts["corrupt"] += 1
                continue
            counts["read"] += 1
            while not stop.is_set():
                try:
                    out.put((index, frame), timeout=0.1)
                    break
                except queue.Full:
                    continue
    finally:
        out.put(_END)


def _queued(source: queue.Queue) -> Iterator:
    while (item := source.get()) is not _END:
        yield item


def _polled(source: queue.Queue, check: Callable[[], None]) -> Iterator:
    """The items of ``source`` up to ``_END``, waiting in short polls with ``check()`` between
    them (a deferred Ctrl-C raises there, never inside the queue's locks)."""
    while True:
        try:
            item = source.get(timeout=POLL_SECONDS)
        except queue.Empty:
            check()
            continue
        if item is _END:
            return
        yield item


def class_counts(labels: np.ndarray) -> np.ndarray:
    """Pixels per label id (256 counts) of a uint8 label image: OpenCV's histogram, several
    times faster than np.bincount at 2 megapixels (float32 counts are exact up to 2**24)."""
    if labels.size >= 2**24:
        return np.bincount(labels.reshape(-1), minlength=256)
    hist = cv2.calcHist([np.ascontiguousarray(labels)], [0], None, [256], [0, 256])
    return hist.reshape(-1).astype(np.int64)


def palette_lut(palette) -> np.ndarray:
    """A (256, 1, 3) BGR lookup table for cv2.LUT and cv2.applyColorMap (ids past the palette
    are black)."""
    table = np.zeros((256, 1, 3), np.uint8)
    table[: len(palette), 0] = np.asarray(palette, np.uint8)[:, ::-1]
    return table


def legend_image(present: tuple[int, ...], frame_height: int, names, palette) -> np.ndarray:
    """The legend panel for the classes in ``present``: coloured boxes and names on black."""
    scale = max(0.35, frame_height / 1400)
    step = int(22 * scale / 0.45)
    text_width = max(
        (cv2.getTextSize(names[c], cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for c in present),
        default=0,
    )
    panel = np.zeros((max(1, 6 + len(present) * step), 8 + step + text_width + 6, 3), np.uint8)
    for row, class_id in enumerate(present):
        y = 4 + row * step
        colour = tuple(int(v) for v in palette[class_id][::-1])  # RGB → BGR
        cv2.rectangle(panel, (4, y), (4 + step - 6, y + step - 6), colour, -1)
        cv2.putText(
            panel,
            names[class_id],
            (4 + step, y + step - 9),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return panel


def compose_workers() -> int:
    """Threads that compose overlays: OpenCV releases the GIL, so they run in parallel."""
    return max(1, min(4, len(os.sched_getaffinity(0)) - 1))


class _Writer:
    """Composes overlays on a small thread pool and encodes them, in order, on one thread.

    ``put`` hands a frame to the pool (colour, blend, legend, side panel, label PNG) and queues
    its future; the encoder thread takes the futures in frame order and writes the MP4 and the
    CSV rows. The queue is bounded, so a slow disk or encoder holds back the producer instead of
    filling memory.
    """

    def __init__(
        self, output: DurableOutput, options: VideoOptions, space: LabelSpace, kept: Progress
    ):
        """``kept``: what an earlier run made durable (nothing on a fresh start)."""
        self.output, self.options = output, options
        self.space = space  # the served model's classes: names, colours, CSV columns
        self.lut = palette_lut(self.space.palette)
        self.legends: dict[tuple[tuple[int, ...], int], np.ndarray] = {}
        self.pool = ThreadPoolExecutor(compose_workers(), thread_name_prefix="compose")
        self.queue: queue.Queue = queue.Queue(maxsize=2 * options.window)
        self.written = kept.frames_written
        self.last_index = kept.last_frame  # source frame number of the last frame encoded
        self.last_written: float | None = None  # perf_counter of the last frame written
        self.longest_gap = 0.0
        self.error: BaseException | None = None
        self.csv_file = self.csv = None
        resuming = bool(kept.parts) or kept.csv_bytes is not None
        if options.csv_path is not None:
            options.csv_path.parent.mkdir(parents=True, exist_ok=True)
            append = resuming and options.csv_path.exists()
            if append and kept.csv_bytes is not None:  # rows after the durable point go
                os.truncate(options.csv_path, kept.csv_bytes)
            mode = "a" if append else "w"
            self.csv_file = open(options.csv_path, mode, newline="")  # noqa: SIM115 (closed in close)
            self.csv = csv.writer(self.csv_file)
            if not append:  # the version that answered each frame: updates show up here
                self.csv.writerow(["frame", "model_version", *self.space.classes])
        if options.labels_dir is not None and resuming:  # label images after it go too
            for png in options.labels_dir.glob("[0-9]*.png"):
                if png.stem.isdigit() and int(png.stem) > kept.last_frame:
                    png.unlink()
        if options.labels_dir is not None:
            options.labels_dir.mkdir(parents=True, exist_ok=True)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for index, version, composed in _queued(self.queue):
                overlay, shares = composed.result()
                self._encode(index, version, overlay, shares)
        except BaseException as exc:  # reported by the next put() and by close()
            if isinstance(exc, OSError):
                exc = OutputError(f"cannot write the output of segment-video: {exc}")
            self.error = exc
            item = None
            while item is not _END:  # drain, so the producer never blocks on a dead writer
                item = self.queue.get()

    def _legend(self, labels: np.ndarray, frame_height: int) -> np.ndarray:
        counts = class_counts(labels)
        present = tuple(int(c) for c in np.flatnonzero(counts) if c < len(self.space.classes))
        key = (present, frame_height)
        panel = self.legends.get(key)
        if panel is None:  # a video shows few distinct class sets: render each once
            panel = legend_image(present, frame_height, self.space.classes, self.space.palette)
            self.legends[key] = panel
        return panel

    def _compose(self, index: int, frame: np.ndarray, labels: np.ndarray, translated):
        height, width = frame.shape[:2]
        # colour at the model's resolution, then one nearest-neighbour resize of the colours
        colour = cv2.applyColorMap(labels, self.lut)  # one pass; LUT needed 3 channels first
        colour = cv2.resize(colour, (width, height), interpolation=cv2.INTER_NEAREST)
        alpha = self.options.alpha
        overlay = cv2.addWeighted(frame, 1.0 - alpha, colour, alpha, 0.0)
        if self.options.legend:
            panel = self._legend(labels, height)
            rows, cols = min(panel.shape[0], height - 4), min(panel.shape[1], width - 4)
            if rows > 0 and cols > 0:
                region = overlay[4 : 4 + rows, 4 : 4 + cols]
                cv2.addWeighted(region, 0.25, panel[:rows, :cols], 0.75, 0.0, dst=region)
        if translated is not None:
            side = cv2.resize(cv2.cvtColor(translated, cv2.COLOR_RGB2BGR), (width, height))
            overlay = np.concatenate([overlay, side], axis=1)
        shares = None
        if self.options.labels_dir is not None or self.csv is not None:
            full = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
            if self.options.labels_dir is not None:
                path = self.options.labels_dir / f"{index:06d}.png"
                if not cv2.imwrite(str(path), full):  # OpenCV reports a failed write as False
                    raise OutputError(f"cannot write label image {path}")
            if self.csv is not None:
                counts = class_counts(full)[: len(self.space.classes)]
                shares = counts / full.size
        return overlay, shares

    def _encode(self, index: int, version: str, overlay: np.ndarray, shares) -> None:
        self._write_frame(overlay)
        now = time.perf_counter()
        if self.last_written is not None:
            self.longest_gap = max(self.longest_gap, now - self.last_written)
        self.last_written = now
        if self.csv is not None:
            self.csv.writerow([index, version, *(f"{share:.5f}" for share in shares)])
        self.last_index = index
        if self.output.due():  # every few seconds: what was written becomes durable
            self.output.seal(index, self.csv_file)

    def _write_frame(self, frame: np.ndarray) -> None:
        self.output.write(frame)
        self.written += 1

    def put(self, item, check: Callable[[], None]) -> None:
        """Queue one frame for composing and encoding; ``check()`` runs while the queue is
        full (a deferred Ctrl-C raises there)."""
        if self.error is not None:  # stop sending frames as soon as writing fails
            raise self.error
        index, frame, labels, translated, version = item
        composed = self.pool.submit(self._compose, index, frame, labels, translated)
        while self.thread.is_alive():
            try:
                self.queue.put((index, version, composed), timeout=POLL_SECONDS)
                return
            except queue.Full:
                try:
                    check()
                except KeyboardInterrupt:
                    composed.cancel()
                    raise
        composed.cancel()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        if self.thread.is_alive():
            self.queue.put(_END)
            self.thread.join()
        self.pool.shutdown(wait=True, cancel_futures=True)
        try:  # what was written so far, whole: even after a failure, it is kept
            self.output.seal(self.last_index, self.csv_file)
        except OutputError as exc:  # the part could not be finished: only sealed parts stay
            self.output.abandon()
            self.written = self.output.progress.frames_written
            self.error = self.error or exc
        if self.csv_file is not None:
            self.csv_file.close()
        if self.error is not None:
            raise self.error


def _model_input(frame_bgr: np.ndarray, options: VideoOptions) -> tuple[dict, np.ndarray]:
    """The request for one frame (JPEG bytes, or RGB pixels) at the model's width, and the
    resized BGR frame."""
    height, width = frame_bgr.shape[:2]
    size = (options.width, max(1, round(height * options.width / width)))
    small = frame_bgr  # a frame already at the model's size is sent as it is
    if size != (width, height):
        small = cv2.resize(frame_bgr, size, interpolation=cv2.INTER_LINEAR)
    if options.encoded:
        params = [cv2.IMWRITE_JPEG_QUALITY, options.jpeg_quality]
        ok, data = cv2.imencode(".jpg", small, params)
        return {"frames": data.reshape(1, -1)}, small
    return {"images": cv2.cvtColor(small, cv2.COLOR_BGR2RGB)[None]}, small


def _connect(options: VideoOptions) -> tuple[ModelClient, ModelClient | None]:
    """The segmenting model's client and, with ``translate_model``, the translator's."""
    model = "segment_encoded" if options.encoded and options.model == "segment" else options.model
    connect = dict(
        timeout=options.timeout,
        retry_window=options.retry_window,
        compression=options.compression,
        shared_memory=options.shared_memory and not options.encoded,
        security=options.security,
    )
    client = ModelClient(options.urls, model, version=options.model_version, **connect)
    translator = None
    if options.translate_model:
        connect.update(shared_memory=False, option="--translated")
        translator = ModelClient(options.urls, options.translate_model, **connect)
    return client, translator


def _count(
    summary: VideoSummary,
    writer: _Writer,
    counts: dict[str, int],
    client: ModelClient,
    started: float,
    cpu_started: float,
) -> None:
    """Frames read, written and corrupt, wall and client CPU time, request latencies."""
    summary.frames_written = writer.written
    summary.frames_read = counts["read"]
    summary.corrupt_frames = counts["corrupt"]
    summary.seconds = time.perf_counter() - started
    summary.client_cpu_s = time.process_time() - cpu_started
    summary.longest_gap_s = writer.longest_gap
    latencies = client.latencies_ms
    if latencies:
        summary.p50_ms = float(np.percentile(latencies, 50))
        summary.p99_ms = float(np.percentile(latencies, 99))


def segment_video(source: str, out: Path, options: VideoOptions) -> VideoSummary:
    """Segment every frame of ``source`` through the server; returns the summary.

    Raises ServingError (server lost for longer than the retry window) or KeyboardInterrupt
    after the partial output has been finalised; the summary of what was done is printed
    either way.

    OpenCV runs one thread per call meanwhile: frames already run in parallel (requests in
    flight, the compose pool), and OpenCV's own threads only oversubscribed the cores (eight
    2048x1024 streams on a 16-core host: 108 ms of client CPU per frame).
    """
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with DeferredInterrupt() as interrupt:
            return _segment_video(source, out, options, interrupt)
    finally:
        cv2.setNumThreads(threads)


def _check_options(out: Path, options: VideoOptions) -> None:
    """Every option a user can get wrong, refused before any frame is read or sent."""
    expect_mp4(out)
    if options.csv_path is not None and options.csv_path.is_dir():
        raise DataError(f"--csv {options.csv_path}: expected a file's path, found a folder")
    labels = options.labels_dir
    if labels is not None and labels.exists() and not labels.is_dir():
        raise DataError(f"--labels-dir {labels}: expected a folder, found a file")
    if options.width < 1:
        raise DataError(f"--width {options.width}: expected 1 pixel or more")
    if options.window < 1:
        raise DataError(f"--window {options.window}: expected at least 1 request in flight")


def _progress_bar(options: VideoOptions, total: int | None, start: int):
    if not options.progress:
        return None
    # tqdm: only when a bar is shown
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="frame", desc="segment-video", dynamic_ncols=True)


def _frame_requests(
    client: ModelClient, translator: ModelClient | None, options: VideoOptions
) -> Callable:
    """The work of one frame on the request threads (frames overlap in the window): its
    labels and, with a translator, its translation."""

    outputs = ["labels", "confidence"] if options.collect is not None else ["labels"]

    def work(item):
        index, frame = item
        request, small = _model_input(frame, options)
        answer = client.request(request, outputs)
        labels = answer["labels"][0]
        confidence = answer["confidence"][0] if options.collect is not None else None
        translated = None
        if translator is not None:
            rgb = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
            translated = translator.request({"images": rgb[None]}, ["translated"])
            translated = translated["translated"][0]
        return labels, confidence, translated, answer.version

    return work


def _stop_reader(reader: threading.Thread, stop: threading.Event, frames: queue.Queue) -> None:
    stop.set()
    while reader.is_alive():  # unblock the reader if it waits on a full queue
        with contextlib.suppress(queue.Empty):
            frames.get_nowait()
        reader.join(timeout=0.1)


def _frame_reader(
    capture: cv2.VideoCapture, options: VideoOptions, counts: dict, start: int, fps: float
) -> tuple[queue.Queue, threading.Event, threading.Thread]:
    """The thread that decodes frames into a bounded queue (not started yet)."""
    frames: queue.Queue = queue.Queue(maxsize=2 * options.window)
    stop = threading.Event()
    reader = threading.Thread(
        target=_read_frames,
        args=(capture, frames, stop, counts, start, fps if options.realtime else 0.0),
        daemon=True,
    )
    return frames, stop, reader


def _segment_video(
    source: str, out: Path, options: VideoOptions, interrupt: DeferredInterrupt
) -> VideoSummary:
    _check_options(out, options)
    capture = open_source(source)
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    out.parent.mkdir(parents=True, exist_ok=True)
    output = DurableOutput(out, source, fps, options)
    kept = output.start(options.resume)
    summary = VideoSummary(output=str(out))
    if kept.complete:
        summary.frames_written = kept.frames_written
        LOGGER.info(
            f"segment-video: {out} is complete ({kept.frames_written} frames): nothing to do"
        )
        return summary
    start = kept.last_frame + 1
    client, translator = _connect(options)
    counts = {"read": 0, "corrupt": 0}
    frames, stop, reader = _frame_reader(capture, options, counts, start, fps)
    # a repository exported before models named their classes: Cityscapes' 19
    names = client.signature.class_names or CITYSCAPES19.classes
    writer = _Writer(output, options, space_of(names), kept)
    if start:
        LOGGER.info(
            f"segment-video: resuming after frame {start - 1} ({kept.frames_written} frames kept)"
        )
    collector = Collector(options.collect, source, fps) if options.collect is not None else None
    bar = _progress_bar(options, total, start)
    started, cpu_started = time.perf_counter(), time.process_time()
    reader.start()

    check = interrupt.check
    for model in (client, translator):
        if model is not None:
            interrupt.cancel_on_interrupt(model.cancel)
    work = _frame_requests(client, translator, options)
    results = ordered_map(_polled(frames, check), work, options.window, poll=check)
    read_to_the_end = False
    try:
        for (index, frame), (labels, confidence, translated, version) in results:
            check()
            writer.put((index, frame, labels, translated, version), check)
            if collector is not None:
                collector.offer(index, frame, confidence, version)
            if bar is not None:
                bar.update()
        read_to_the_end = True
    except KeyboardInterrupt:
        summary.stopped = "interrupted (Ctrl-C)"
        raise
    except (ServingError, DataError, OutputError) as exc:
        summary.stopped = str(exc)
        raise
    finally:
        for model in (client, translator):  # requests waiting out a lost server end now
            if model is not None:
                model.cancel()
        results.close()
        _stop_reader(reader, stop, frames)
        capture.release()
        try:
            writer.close()
        finally:
            if bar is not None:
                bar.close()
            _count(summary, writer, counts, client, started, cpu_started)
            summary.collected = collector.line() if collector is not None else ""
            complete = read_to_the_end and writer.error is None
            if not output.finish(complete):
                summary.output = "(nothing written)"
            client.close()
            if translator is not None:
                translator.close()
            LOGGER.info(f"segment-video: {summary.line()}")
    return summary
