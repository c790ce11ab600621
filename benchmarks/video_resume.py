"""segment-video killed with SIGKILL at random moments and resumed each time, against one run.

    cycada bench video-resume --repository model_repository --kills 10 --out runs/video-resume

Serves REPOSITORY, segments a long clip once without interruption, then again killing the
command (SIGKILL) at random moments ``--kills`` times, each time resuming it with ``--resume``
until it finishes. Reports whether every frame is in the output once and in order (CSV, label
images, MP4), whether the labels equal the uninterrupted run's, and the total work: requests
the server answered for the killed run over those of the uninterrupted one (goal at most 1.2).
Without ``--clip``, a synthetic clip of ``--frames`` frames.
"""

from __future__ import annotations

import csv
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import tritonclient.grpc as grpcclient

from cycada.bench_results import write_results
from cycada.clients.video_output import frames_in
from cycada.command_line import add_repository, at_least_one, command_parser
from cycada.serving.server import ServerOptions, TritonServer
from cycada.training.segmentation.scene_writer import write_clip


def _answered(url: str, model: str) -> int:
    stats = grpcclient.InferenceServerClient(url).get_inference_statistics(model)
    return sum(s.inference_stats.success.count for s in stats.model_stats)


def _command(clip: Path, out: Path, url: str, width: int) -> list[str]:
    return [
        sys.executable, "-m", "cycada.cli", "segment-video", str(clip), "--out", str(out),
        "--url", url, "--width", str(width), "--labels-dir", str(out.with_suffix("")) + "-labels",
        "--csv", str(out.with_suffix(".csv")), "--quiet",
    ]  # fmt: skip


def _kill_and_resume(
    command: list[str],
    out: Path,
    total: int,
    kill_count: int,
    pause: tuple[float, float],
    rng: random.Random,
) -> tuple[int, int]:
    """Run ``command`` (then with --resume), killed with -9 after a random pause ``kill_count``
    times, until its output holds ``total`` frames; returns (kills, runs)."""
    kills = runs = 0
    while True:
        process = subprocess.Popen(
            [*command, *(["--resume"] if runs else [])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        runs += 1
        if kills < kill_count:
            try:  # a random moment of the run's expected length
                process.wait(timeout=rng.uniform(*pause))
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait()
                kills += 1
                continue
        if process.wait() != 0:
            raise SystemExit(f"the resumed run failed (exit code {process.returncode})")
        if kills >= kill_count or frames_in(out) == total:
            return kills, runs


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        "bench video-resume",
        __doc__.splitlines()[0],
        "cycada bench video-resume --repository model_repository --kills 10",
    )
    add_repository(parser, required=True, default=None)
    parser.add_argument("--clip", type=Path, help="a video (default: a synthetic clip)")
    parser.add_argument(
        "--frames", type=at_least_one, default=3000, help="frames of the synthetic clip"
    )
    parser.add_argument("--width", type=at_least_one, default=256)
    parser.add_argument("--kills", type=at_least_one, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-video-resume"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    clip = args.clip
    if clip is None:  # written once: a later run reuses it
        clip = args.out / "clip.mp4"
        if frames_in(clip) != args.frames:
            write_clip(clip, args.frames, args.width, args.width // 2)
    total = frames_in(clip)
    options = ServerOptions.on_free_ports(args.repository, models=["segment"])
    rng = random.Random(args.seed)
    with TritonServer(options) as server:
        url = server.grpc_url
        before = _answered(url, "segment")
        started = time.perf_counter()
        plain = subprocess.run(_command(clip, args.out / "plain.mp4", url, args.width))
        plain_seconds = time.perf_counter() - started
        plain_requests = _answered(url, "segment") - before
        if plain.returncode != 0:
            raise SystemExit("the uninterrupted run failed")
        killed_out = args.out / "killed.mp4"
        command = _command(clip, killed_out, url, args.width)
        before = _answered(url, "segment")
        started = time.perf_counter()
        pause = (0.5, max(1.0, plain_seconds / args.kills))
        kills, runs = _kill_and_resume(command, killed_out, total, args.kills, pause, rng)
        killed_seconds = time.perf_counter() - started
        killed_requests = _answered(url, "segment") - before
    with open(killed_out.with_suffix(".csv"), newline="") as handle:
        frames = [int(row["frame"]) for row in csv.DictReader(handle)]
    labels, plain_labels = Path(f"{killed_out.with_suffix('')}-labels"), args.out / "plain-labels"
    differing = [
        png.name
        for png in sorted(plain_labels.glob("*.png"))
        if not np.array_equal(
            cv2.imread(str(png), cv2.IMREAD_UNCHANGED),
            cv2.imread(str(labels / png.name), cv2.IMREAD_UNCHANGED),
        )
    ]
    result = {
        "clip": str(clip),
        "frames": total,
        "kills": kills,
        "runs": runs,
        "every_frame_once_in_order": frames == list(range(total)),
        "output_frames": frames_in(killed_out),
        "label_images": len(list(labels.glob("*.png"))),
        "labels_differing_from_uninterrupted": len(differing),
        "uninterrupted_s": round(plain_seconds, 1),
        "killed_and_resumed_s": round(killed_seconds, 1),
        "requests_uninterrupted": plain_requests,
        "requests_killed_and_resumed": killed_requests,
        "work_ratio": round(killed_requests / max(1, plain_requests), 3),
    }
    write_results(args.out, "video_resume", result)
    print(json.dumps(result))
    return 0
