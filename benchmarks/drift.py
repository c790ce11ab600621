"""Drift figures: the cost of the served signals, how fast a shift is flagged, which stage ships.

    cycada bench drift --run runs/demo-day --out runs/bench-drift

* ``cost``: one server, the segment model twice (signals on, and a copy with
  ``served_signals: false``), saturated in turns (``--rounds`` of ``--seconds`` each): frames/s
  of each, and the ratio of their medians (goal: at most 3 % lower with the signals).
* ``detect`` (needs ``--run``, a run adapted to ``--clip``): the clip looped for ``--minutes`` of
  footage through the server, judged every second of footage as ``cycada monitor`` judges
  (window 250 frames): false flags (goal 0); then the same clip at dusk
  (``scenes.at_dusk``): seconds of footage until the flag.
* ``verdict``: the stage the label-free verdict ships against the stage labels pick, per run,
  with the mIoU each gives; on ``--runs DIR...`` (finished runs with a labelled evaluation set),
  or, with ``--seeds N``, on runs it trains (``--preset``, default demo) for every labelled shift
  available offline: the demo's game scenes to its camera scenes, to the camera at dusk, and to
  CamVid's real frames (from ``$CYCADA_DATA``).

Without ``--run``, ``cost`` uses seeded, untrained Fast-SCNN weights (the same compute).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tritonclient.grpc as grpcclient

from cycada.bench_results import write_results
from cycada.benchmarks.deploy import default_clip
from cycada.benchmarks.served import random_run
from cycada.clients.load import run_load
from cycada.clients.monitor import Monitor, metrics_url
from cycada.command_line import at_least_one, seconds
from cycada.errors import DataError
from cycada.export.exporter import ExportOptions, export_run
from cycada.export.parity import default_data_root
from cycada.serving.server import ServerOptions, TritonServer
from cycada.signals import ShiftRule
from cycada.training.segmentation.config import resolve_seg_config
from cycada.training.segmentation.pipeline import run_seg, seg_verdict
from cycada.training.segmentation.scene_writer import write_scene_dataset
from cycada.training.segmentation.scenes import at_dusk

PARTS = ("cost", "detect", "verdict")
PLAIN = "segment_plain"  # the segment model with its signals off


def _frames(clip: Path, width: int) -> list[np.ndarray]:
    """The clip's frames as RGB at ``width`` (aspect kept)."""
    capture = cv2.VideoCapture(str(clip))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        height = round(frame.shape[0] * width / frame.shape[1])
        frames.append(cv2.cvtColor(cv2.resize(frame, (width, height)), cv2.COLOR_BGR2RGB))
    capture.release()
    if not frames:
        raise DataError(f"--clip {clip}: expected a video OpenCV can read")
    return frames


def add_plain_copy(repository: Path) -> None:
    """``segment_plain``: the segment model's versions (hard links) with the signals off."""
    source, target = repository / "segment", repository / PLAIN
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, copy_function=os.link)
    for config in target.rglob("*.pbtxt"):  # a new file each: the old one is a hard link
        text = re.sub(r'^name: "segment"', f'name: "{PLAIN}"', config.read_text(), flags=re.M)
        text += 'parameters { key: "served_signals" value: { string_value: "false" } }\n'
        config.unlink()
        config.write_text(text)


def measure_cost(repository: Path, frame: np.ndarray, rounds: int, seconds: float) -> dict:
    add_plain_copy(repository)
    fps: dict[str, list[float]] = {"segment": [], PLAIN: []}
    with TritonServer(ServerOptions.on_free_ports(repository, poll_seconds=0)) as server:
        for _ in range(rounds):
            for model in fps:  # in turns: the machine's drift falls on both alike
                result = run_load(server.grpc_url, model, frame, 4, seconds, 1.0)
                fps[model].append(result.throughput)
    on, off = statistics.median(fps["segment"]), statistics.median(fps[PLAIN])
    return {
        "frames_per_s_signals_on": fps["segment"],
        "frames_per_s_signals_off": fps[PLAIN],
        "median_on": on,
        "median_off": off,
        "on_over_off": on / off,
        "frame": list(frame.shape),
    }


def _judge(server, monitor: Monitor, frames, count: int, per_reading: int, on_flag=None):
    """Send ``count`` frames (the list looped) in order; read the metrics every
    ``per_reading`` frames. Returns the readings' flag lists, in order."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    verdicts = []
    for index in range(count):
        image = frames[index % len(frames)][None]
        tensor = grpcclient.InferInput("images", list(image.shape), "UINT8")
        tensor.set_data_from_numpy(image)
        client.infer("segment", [tensor], outputs=[grpcclient.InferRequestedOutput("labels")])
        if (index + 1) % per_reading == 0:
            monitor.read()
            state = next(s for s in monitor.states() if s.model == "segment")
            verdicts.append(state.report.flags)
            if on_flag is not None and state.report.flags and on_flag(index + 1):
                break
    return verdicts


def measure_detection(
    repository: Path, clip: Path, width: int, minutes: float, fps: float
) -> dict[str, Any]:
    day = _frames(clip, width)
    rng = np.random.default_rng(0)
    dusk = [at_dusk(frame, rng) for frame in day]
    per_second = max(1, round(fps))
    with TritonServer(ServerOptions.on_free_ports(repository, poll_seconds=0)) as server:
        url = metrics_url(f"127.0.0.1:{server.options.metrics_port}")
        monitor = Monitor([url], 250, ShiftRule())
        monitor.read()
        started = time.perf_counter()
        frames = round(minutes * 60 * fps)
        day_readings = _judge(server, monitor, day, frames, per_second)
        day_seconds = time.perf_counter() - started
        flagged = [flags for flags in day_readings if flags]
        found: dict[str, Any] = {}

        def first(frames_sent: int) -> bool:
            found["frames"] = frames_sent
            return True

        dusk_readings = _judge(server, monitor, dusk, round(120 * fps), per_second, first)
    return {
        "footage_minutes_day": minutes,
        "readings_day": len(day_readings),
        "false_flags_day": len(flagged),
        "false_flag_examples": flagged[:3],
        "wall_seconds_day": day_seconds,
        "seconds_of_dusk_footage_to_flag": found["frames"] / fps if found else None,
        "dusk_flags": dusk_readings[-1] if dusk_readings else [],
    }


SHIFTS = ("camera", "dusk", "camvid")  # targets of the demo's game-style source


def train_shift_runs(out: Path, seeds: int, preset: str) -> list[Path]:
    """Every shift x seed, trained (or resumed) under ``out``; source stages shared."""

    data = (out / "data").resolve()
    write_scene_dataset(data / "gta5", 160, "game", "gta5", 256, 128)
    for style in ("camera", "dusk"):
        root = data / style / "cityscapes"
        write_scene_dataset(root, 160, style, "cityscapes", 256, 128, labels=False)
        write_scene_dataset(root, 20, style, "cityscapes", 256, 128, split="val", seed=1)
    shared = default_data_root()
    targets = {
        "camera": {"target": "cityscapes", "target_root": str(data / "camera")},
        "dusk": {"target": "cityscapes", "target_root": str(data / "dusk")},
        "camvid": {"target": "camvid", "target_root": str(shared.resolve())},
    }
    runs = []
    for seed in range(seeds):
        for shift in SHIFTS:
            run = out / "runs" / f"{shift}-seed{seed}"
            overrides = {"seed": seed, "data": {"data_root": str(data), **targets[shift]}}
            config = resolve_seg_config(preset, overrides=overrides)
            run_seg(config, run, quiet=True, stage_cache=out / "stage-cache")
            runs.append(run)
    return runs


def verdict_rows(runs: list[Path]) -> list[dict[str, Any]]:
    """Per run: the stage labels pick, the label-free verdict's, the mIoU of each."""
    rows = []
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        stages = metrics["stages"]
        if not all("target" in stages[s] for s in stages if s in ("source", "target", "feature")):
            raise DataError(f"{run}: the verdict bench needs runs with a labelled evaluation set")
        labelled = seg_verdict(stages)
        unlabelled = {
            name: {k: v for k, v in entry.items() if k != "target"}
            for name, entry in stages.items()
        }
        free = seg_verdict(unlabelled)
        miou = {
            s: stages[s]["target"]["miou"] for s in ("source", "target", "feature") if s in stages
        }
        rows.append(
            {
                "run": str(run),
                "shift": run.name,
                "domains": f"{metrics['source']} → {metrics['target']}",
                "seed": metrics.get("seed"),
                "labels_pick": labelled["stage"],
                "label_free_pick": free["stage"],
                "agree": labelled["stage"] == free["stage"],
                "miou": miou,
                "miou_lost": miou[labelled["stage"]] - miou[free["stage"]],
                "last_stage_lost": miou[labelled["stage"]] - miou[list(miou)[-1]],
                "reason": free["reason"],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cycada bench drift",
        description=__doc__.splitlines()[0],
        epilog="example:\n  cycada bench drift --only cost --out runs/bench-drift",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", type=Path, help="a run adapted to --clip (cost, detect)")
    parser.add_argument(
        "--stage", help="the run's stage to serve (default: the one its verdict ships)"
    )
    parser.add_argument("--clip", type=Path, default=None, help="a video (default: dashcam)")
    parser.add_argument("--width", type=at_least_one, default=512, help="model input width")
    parser.add_argument("--rounds", type=at_least_one, default=3, help="cost: turns per model")
    parser.add_argument("--seconds", type=seconds(), default=10.0, help="cost: seconds per turn")
    parser.add_argument("--minutes", type=float, default=10.0, help="detect: daylight footage")
    parser.add_argument("--runs", type=Path, nargs="*", default=[], help="verdict: finished runs")
    parser.add_argument("--seeds", type=int, default=0, help="verdict: train the shifts, N seeds")
    parser.add_argument("--preset", default="demo", help="verdict: the preset of those runs")
    parser.add_argument("--only", choices=PARTS, action="append", help="one part (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-drift"))
    args = parser.parse_args(argv)
    clip = args.clip or default_clip()
    parts = args.only or [p for p in PARTS if p != "detect" or args.run is not None]
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"clip": str(clip), "width": args.width, "cpus": os.cpu_count()}
    if "cost" in parts or "detect" in parts:
        run = args.run
        if run is None:
            run = random_run("fastscnn", args.out / "run")
        repository = args.out / "repository"
        shutil.rmtree(repository, ignore_errors=True)
        options = ExportOptions(fp16=False, stage=args.stage if args.run else None)
        export_run(run, repository, options, log=lambda _: None)
    if "cost" in parts:
        frame = _frames(clip, args.width)[0][None]
        results["cost"] = measure_cost(repository, frame, args.rounds, args.seconds)
        print(json.dumps({"cost": results["cost"]}), flush=True)
    if "detect" in parts:
        if args.run is None:
            raise DataError("--only detect needs --run: a run adapted to --clip")
        capture = cv2.VideoCapture(str(clip))
        fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        capture.release()
        results["detect"] = measure_detection(repository, clip, args.width, args.minutes, fps)
        print(json.dumps({"detect": results["detect"]}), flush=True)
    runs = list(args.runs)
    if "verdict" in parts and args.seeds:
        runs += train_shift_runs(args.out, args.seeds, args.preset)
    if "verdict" in parts and runs:
        results["verdict"] = verdict_rows(runs)
        for row in results["verdict"]:
            print(json.dumps(row), flush=True)
    write_results(args.out, "drift", results)
    return 0
