"""segment-video end to end against the served model's throughput, same server, same sizes.

    python -m cycada.clients.bench_video --repository R --clip CLIP.mp4 --width 768 --out DIR

Starts tritonserver on R, measures the encoded-frame endpoint with `cycada.clients.load` at
``--window`` requests in flight on one frame of the clip (resized and JPEG-encoded as the video
command does), then runs segment-video on the whole clip twice with the same window (the first
pass warms every instance's kernels for that size) and reports the second pass's fps / served
throughput.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2

from cycada.atomic import write_json_atomic
from cycada.clients.load import run_load
from cycada.clients.video import VideoOptions, _model_input, segment_video
from cycada.serving.server import ServerOptions, TritonServer, free_port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--clip", required=True)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--raw", action="store_true", help="raw frames instead of JPEG")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-video"))
    args = parser.parse_args(argv)
    options = VideoOptions(
        width=args.width, window=args.window, encoded=not args.raw, progress=False
    )
    capture = cv2.VideoCapture(args.clip)
    ok, frame = capture.read()
    capture.release()
    request, _ = _model_input(frame, options)
    name, array = next(iter(request.items()))
    model = "segment" if args.raw else "segment_encoded"
    server_options = ServerOptions(
        args.repository, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()
    )
    with TritonServer(server_options) as server:
        options.urls = [server.grpc_url]
        args.out.mkdir(parents=True, exist_ok=True)
        segment_video(args.clip, args.out / "warmup.mp4", options)  # tunes every instance
        served = run_load(server.grpc_url, model, array, args.window, args.seconds, input_name=name)
        summary = segment_video(args.clip, args.out / "video.mp4", options)
    result = {
        "model": model,
        "width": args.width,
        "window": args.window,
        "served_throughput": round(served.throughput, 2),
        "video_fps": round(summary.fps, 2),
        "ratio": round(summary.fps / served.throughput, 3) if served.throughput else None,
        "client_cpu_ms_per_frame": round(
            1000 * summary.client_cpu_s / max(1, summary.frames_written), 2
        ),
        "frames": summary.frames_written,
    }
    write_json_atomic(args.out / "video_vs_served.json", result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
