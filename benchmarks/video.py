"""segment-video end to end against the served model's throughput, same server, same sizes.

    cycada bench video --repository R --clip CLIP.mp4 --width 768 --out DIR
    cycada bench video ... --server-cpus 0 --client-cpus 1 --interference
    cycada bench video ... --baseline OLD_REPOSITORY

Starts tritonserver on R, runs segment-video on the whole clip once to warm every instance for
that size, measures the served throughput with `cycada.clients.load` at ``--window`` requests in
flight on one frame of the clip (resized, and JPEG-encoded unless ``--raw``, as the video
command does), then runs segment-video again with the same window and reports that pass's
fps / served throughput.

``--server-cpus`` / ``--client-cpus`` pin the server and this process to separate CPUs, as if
they ran on separate machines. ``--interference`` also measures the served throughput while a
video decode + MP4 encode loop (the client's codec work, with no requests) runs on the client
CPUs: on machines whose CPUs share a physical core that loop slows the server, which bounds
what any client can reach there.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import tempfile
from pathlib import Path

import cv2

from cycada.bench_results import write_results
from cycada.clients.load import run_load
from cycada.clients.video import VideoOptions, _model_input, segment_video
from cycada.command_line import add_repository, at_least_one, command_parser, seconds
from cycada.errors import CycadaError
from cycada.serving.server import ServerOptions, TritonServer, parse_cpus


def codec_loop(clip: str, stop) -> None:
    """Decode ``clip`` and encode it to MP4 over and over until ``stop`` is set."""
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "loop.mp4")
        while not stop.is_set():
            capture = cv2.VideoCapture(clip)
            writer = None
            while not stop.is_set():
                ok, frame = capture.read()
                if not ok:
                    break
                if writer is None:
                    size = (frame.shape[1], frame.shape[0])
                    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 30, size)
                writer.write(frame)
            capture.release()
            if writer is not None:
                writer.release()


def _measure(repository: Path, args, options: VideoOptions, request: dict, labels: Path) -> dict:
    """Served throughput and segment-video's fps on one repository (its own server, pinned as
    asked); the warm-up pass writes each frame's labels under ``labels``."""
    name, array = next(iter(request.items()))
    model = "segment" if args.raw else "segment_encoded"
    server_options = ServerOptions.on_free_ports(repository, cpus=args.server_cpu_list)
    result: dict = {"repository": str(repository), "model": model, "width": args.width}
    result["window"] = args.window
    with TritonServer(server_options) as server:
        options = dataclasses.replace(options, urls=[server.grpc_url], labels_dir=labels)
        args.out.mkdir(parents=True, exist_ok=True)
        segment_video(args.clip, args.out / "warmup.mp4", options)  # tunes every instance
        options = dataclasses.replace(options, labels_dir=None)
        served = run_load(server.grpc_url, model, array, args.window, args.seconds, input_name=name)
        summary = segment_video(args.clip, args.out / "video.mp4", options)
        if args.interference:
            spawn = multiprocessing.get_context("spawn")
            stop = spawn.Event()
            loop = spawn.Process(target=codec_loop, args=(args.clip, stop), daemon=True)
            loop.start()
            try:
                loaded = run_load(
                    server.grpc_url, model, array, args.window, args.seconds, input_name=name
                )
            finally:
                stop.set()
                loop.join()
            result["served_with_codec_loop"] = round(loaded.throughput, 2)
    # a ratio against a load run that had errors would compare with a broken server: none then
    clean = served.errors == 0 and served.throughput > 0
    result.update(
        served_throughput=round(served.throughput, 2),
        served_errors=served.errors,
        served_error_messages=served.error_messages,
        video_fps=round(summary.fps, 2),
        ratio=round(summary.fps / served.throughput, 3) if clean else None,
        client_cpu_ms_per_frame=round(
            1000 * summary.client_cpu_s / max(1, summary.frames_written), 2
        ),
        frames=summary.frames_written,
        server_cpus=args.server_cpus,
        client_cpus=args.client_cpus,
    )
    return result


def _label_agreement(labels: Path, baseline: Path) -> float | None:
    """Share of pixels, over every frame both passes wrote, whose labels are equal."""
    equal = total = 0
    for path in sorted(labels.glob("*.png")):
        other = baseline / path.name
        if not other.exists():
            continue
        a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(other), cv2.IMREAD_UNCHANGED)
        equal += int((a == b).sum())
        total += a.size
    return round(equal / total, 6) if total else None


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        "bench video",
        __doc__.splitlines()[0],
        "cycada bench video --repository model_repository --clip dashcam.mp4 --width 960",
    )
    add_repository(parser, required=True, default=None)
    parser.add_argument("--clip", required=True)
    parser.add_argument("--width", type=at_least_one, default=512)
    parser.add_argument("--window", type=at_least_one, default=8)
    parser.add_argument("--raw", action="store_true", help="raw frames instead of JPEG")
    parser.add_argument("--seconds", type=seconds(), default=8.0)
    parser.add_argument("--server-cpus", help="CPUs for tritonserver, e.g. 0 or 0,2-3")
    parser.add_argument("--client-cpus", help="CPUs for this client, e.g. 1")
    parser.add_argument("--interference", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-video"))
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a second repository (e.g. exported by an older cycada) measured the same way "
        "after the first: the speedup, and the share of equal labels over the whole clip",
    )
    args = parser.parse_args(argv)
    # both read against this process's CPUs, before it pins itself to the client's
    args.server_cpu_list = (
        parse_cpus(args.server_cpus, "--server-cpus") if args.server_cpus else None
    )
    client_cpus = parse_cpus(args.client_cpus, "--client-cpus") if args.client_cpus else None
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)  # the load workers and codec loop inherit it
    options = VideoOptions(
        width=args.width, window=args.window, encoded=not args.raw, progress=False
    )
    capture = cv2.VideoCapture(args.clip)
    ok, frame = capture.read()
    capture.release()
    if not ok:
        raise SystemExit(f"--clip {args.clip}: expected a video OpenCV can read")
    request, _ = _model_input(frame, options)
    result = _measure(args.repository, args, options, request, args.out / "labels")
    if args.baseline:
        baseline = _measure(args.baseline, args, options, request, args.out / "baseline-labels")
        result["baseline"] = baseline
        result["speedup"] = round(result["video_fps"] / baseline["video_fps"], 3)
        result["labels_equal_to_baseline"] = _label_agreement(
            args.out / "labels", args.out / "baseline-labels"
        )
    write_results(args.out, "video_vs_served", result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except CycadaError as exc:  # bad input: one line, not a traceback
        raise SystemExit(f"bench_video: error: {exc}") from None
