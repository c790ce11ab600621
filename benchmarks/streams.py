"""Several live camera streams through one server: `segment-video --realtime` in N processes.

    cycada bench streams --repository R --streams 8 --fps 25 --size 2048x1024 --out DIR

Writes a synthetic dashcam clip at ``--size`` and ``--fps`` (or reads ``--clip``), starts
tritonserver on R (or uses ``--url``), warms it with one unpaced pass, then runs ``--streams``
segment-video processes at once, each reading the clip at its frame rate as a camera delivers it
and sending JPEG frames (the encoded-frame model). Reports per stream: frames/s, the request
p50/p99, the client CPU per frame, and whether every frame came back in order (the per-frame
CSV lists frames 0..n-1 once each, in order). A stream that keeps its camera's pace reaches the
clip's fps; one that falls behind reads its frames late and ends below it.
"""

from __future__ import annotations

import csv
import multiprocessing
import tempfile
from pathlib import Path

import cv2

from cycada.bench_results import write_results
from cycada.clients.video import VideoOptions, segment_video
from cycada.command_line import add_repository, add_urls, at_least_one, command_parser, positive
from cycada.serving.server import ServerOptions, TritonServer
from cycada.sizes import image_size
from cycada.training.segmentation.scene_writer import write_clip


def frames_in_order(csv_path: Path, frames: int) -> bool:
    """The per-frame CSV names frames 0..frames-1, each once, in order."""
    with open(csv_path, newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    return [int(row[0]) for row in rows] == list(range(frames))


def one_stream(job: tuple[str, str, str, int, int, bool]) -> dict:
    """One segment-video process (spawned): the clip at its own pace into ``out``."""

    url, clip, out, width, window, realtime = job
    options = VideoOptions(
        urls=url,
        model="segment_encoded",
        encoded=True,
        width=width,
        window=window,
        progress=False,
        realtime=realtime,
        csv_path=Path(out).with_suffix(".csv"),
    )
    summary = segment_video(clip, Path(out), options)
    return {
        "fps": round(summary.fps, 2),
        "frames": summary.frames_written,
        "seconds": round(summary.seconds, 2),
        "p50_ms": round(summary.p50_ms, 1),
        "p99_ms": round(summary.p99_ms, 1),
        "client_cpu_ms_per_frame": round(
            1000 * summary.client_cpu_s / max(1, summary.frames_written), 1
        ),
    }


def run_streams(
    url: list[str], clip: Path, out: Path, streams: int, width: int, window: int
) -> list:
    spawn = multiprocessing.get_context("spawn")
    jobs = [
        (url, str(clip), str(out / f"stream{i}.mp4"), width, window, True) for i in range(streams)
    ]
    with spawn.Pool(streams) as pool:
        return pool.map(one_stream, jobs)


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        "bench streams",
        __doc__.splitlines()[0],
        "cycada bench streams --repository model_repository --streams 2 --fps 5 --size 512x256",
    )
    add_repository(parser, default=None, help="model repository to serve")
    add_urls(parser, default=[], help="running server(s) instead of --repository")
    parser.add_argument("--clip", type=Path, help="default: a synthetic clip at --size, --fps")
    parser.add_argument("--streams", type=at_least_one, default=8)
    parser.add_argument(
        "--fps", type=positive("frames per second"), default=25.0, help="each camera's frame rate"
    )
    parser.add_argument(
        "--frames", type=at_least_one, default=250, help="frames of the synthetic clip"
    )
    parser.add_argument("--size", type=image_size, default=(2048, 1024), help="WIDTHxHEIGHT")
    parser.add_argument(
        "--window", type=at_least_one, default=4, help="requests in flight per stream"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench-streams"))
    args = parser.parse_args(argv)
    if not args.repository and not args.url:
        parser.error("give --repository (a server is started) or --url")
    width, height = args.size
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        # rendered at half size and scaled up: at full size rendering takes longer than the run
        clip = args.clip or write_clip(
            Path(scratch) / "dashcam.mp4", args.frames, width, height, fps=args.fps, render_scale=2
        )
        capture = cv2.VideoCapture(str(clip))
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        clip_fps = capture.get(cv2.CAP_PROP_FPS)
        capture.release()
        if args.url:
            rows = _measure(args.url, clip, frames, args, width)
        else:
            with TritonServer(ServerOptions.on_free_ports(args.repository)) as server:
                rows = _measure([server.grpc_url], clip, frames, args, width)
    result = {
        "streams": args.streams,
        "size": [width, height],
        "clip_fps": clip_fps,
        "frames_per_stream": frames,
        "window": args.window,
        "rows": rows,
        "min_fps": min(row["fps"] for row in rows),
        "total_fps": round(sum(row["fps"] for row in rows), 1),
        "worst_p99_ms": max(row["p99_ms"] for row in rows),
        "every_frame_in_order": all(row["in_order"] for row in rows),
    }
    lines = [
        f"# {args.streams} live streams of {width}x{height} JPEG frames at {clip_fps:g} fps",
        "",
        "| stream | frames/s | frames | p50 ms | p99 ms | client CPU ms/frame | in order |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *(
            f"| {i} | {r['fps']} | {r['frames']} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{r['client_cpu_ms_per_frame']} | {r['in_order']} |"
            for i, r in enumerate(rows)
        ),
        "",
        f"total {result['total_fps']} frames/s; slowest stream {result['min_fps']} frames/s; "
        f"worst p99 {result['worst_p99_ms']} ms; every frame in order: "
        f"{result['every_frame_in_order']}",
    ]
    write_results(args.out, "streams", result, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _measure(url: list[str], clip: Path, frames: int, args, width: int) -> list[dict]:
    # one unpaced pass first: every instance tunes its kernels for this size
    one_stream((url, str(clip), str(args.out / "warmup.mp4"), width, args.window, False))
    rows = run_streams(url, clip, args.out, args.streams, width, args.window)
    for index, row in enumerate(rows):
        row["in_order"] = frames_in_order(args.out / f"stream{index}.csv", frames)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
