"""`cycada demo`, steps 8-10: the loop CyCADA exists for, on the demo's own world.

8. the camera at dusk (a shifted condition): its clip is segmented by version 1 while the frames
   the model is unsure of are collected, and the monitor judges those frames against version 1's
   baseline;
9. adapt again from the same source checkpoint with the collected frames as the target (no
   labels), and export the verdict's stage as version 2 into the served repository: the polling
   server loads it without a restart;
10. the same clip through version 2; both versions' signals side by side, and their mIoU on
   labelled dusk scenes (which no step above used). Version 1 is the control: the same source
   checkpoint and as many iterations, adapted to the daylight scenes instead.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import tritonclient.grpc as grpcclient

from cycada.clients.collect import CollectOptions
from cycada.clients.demo_report import SMOKE, stage_lines
from cycada.clients.monitor import ModelState, Monitor, metrics_url, render
from cycada.clients.video import VideoOptions, segment_video
from cycada.export.exporter import ExportOptions, export_run
from cycada.signals import ShiftRule
from cycada.training.segmentation.config import resolve_seg_config
from cycada.training.segmentation.eval import evaluate_seg_checkpoint
from cycada.training.segmentation.pipeline import run_seg
from cycada.training.segmentation.scene_writer import write_clip, write_scene_dataset

MODEL = "segment_encoded"  # what segment-video --encoded sends to (its signals are counted)


def _step(number: int, text: str) -> float:
    print(f"\n[{number}/11] {text}", flush=True)
    return time.perf_counter()


def _segment_and_judge(
    server, clip: Path, overlay: Path, version: str, width: int, collect: CollectOptions | None
) -> ModelState:
    """Segment ``clip`` through ``version`` and judge exactly its frames against the baseline."""
    monitor = Monitor([metrics_url(f"127.0.0.1:{server.options.metrics_port}")], 1, ShiftRule())
    monitor.read()
    options = VideoOptions(
        urls=[server.grpc_url],
        encoded=True,
        width=width,
        model_version=version,
        collect=collect,
        progress=False,
    )
    summary = segment_video(str(clip), overlay, options)  # its line says what was collected
    monitor.read()
    monitor.window = summary.frames_written  # exactly this clip's frames, all judged
    monitor.rule = ShiftRule(min_frames=min(ShiftRule.min_frames, summary.frames_written))
    state = next(s for s in monitor.states() if (s.model, s.version) == (MODEL, version))
    print("\n".join(f"  {line}" for line in render([state]).splitlines()), flush=True)
    return state


def _wait_for_version(server, version: str, timeout: float = 120.0) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(client.is_model_ready(name, version) for name in ("segment", MODEL)):
            return
        time.sleep(0.5)
    raise TimeoutError(f"version {version} was not served within {timeout:.0f} s")


def _dusk_miou(checkpoint: Path, dusk_root: Path, out: Path) -> float:

    evaluate_seg_checkpoint(checkpoint, "cityscapes", "val", str(dusk_root), out, None, 0)
    return json.loads((out / "metrics.json").read_text())["miou"]


def _shipped_checkpoint(repository: Path, version: str) -> Path:
    return Path(
        json.loads((repository / "segment" / version / "endpoint.json").read_text())["checkpoint"]
    )


def shift_and_adapt(
    out: Path, data: Path, run_dir: Path, repository: Path, server, smoke: bool
) -> dict[str, Any]:
    """Steps 8-10 against the running ``server`` of ``repository`` (version 1 served)."""

    # frames at the width the runs train and measure their baselines at: another width is a
    # shift of its own (objects twice the size the model learned)
    width = json.loads((run_dir / "metrics.json").read_text())["protocol"]["resize_width"]
    t = _step(8, "a shifted condition: the camera at dusk, through version 1 (collecting)")
    clip = write_clip(data / "dusk.mp4", 40 if smoke else 150, 512, 256, style="dusk", seed=3)
    size = (128, 64) if smoke else (256, 128)
    dusk_root = data / "dusk"  # labelled dusk scenes: only the mIoU at the end reads them
    write_scene_dataset(
        dusk_root / "cityscapes",
        6 if smoke else 40,
        "dusk",
        "cityscapes",
        *size,
        split="val",
        seed=4,
    )
    collected = out / "collected"
    shutil.rmtree(collected, ignore_errors=True)
    collect = CollectOptions(collected, below=0.9, rate=5.0)
    before = _segment_and_judge(server, clip, out / "dusk-v1.mp4", "1", width, collect)
    print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)

    t = _step(9, "adapt again from the same source checkpoint to the collected frames")
    adapted = out / "run-dusk"
    (adapted / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copy2(run_dir / "checkpoints" / "source.safetensors", adapted / "checkpoints")
    config = resolve_seg_config(
        "demo",
        sets=SMOKE if smoke else [],
        overrides={"data": {"data_root": str(data), "target": f"folder:{collected}"}},
    )
    metrics = run_seg(config, adapted)
    for line in stage_lines(metrics):
        print(f"  {line}", flush=True)
    verdict = metrics.get("verdict") or {"stage": "?", "reason": "no stage measured"}
    print(f"  verdict: ship {verdict['stage']} ({verdict['reason']})", flush=True)
    export_run(adapted, repository, ExportOptions(fp16=False), log=lambda m: print(f"  {m}"))
    _wait_for_version(server, "2")
    print(f"  version 2 served without a restart; done in {time.perf_counter() - t:.0f} s")

    _step(10, "the same dusk clip through version 2")
    after = _segment_and_judge(server, clip, out / "dusk-v2.mp4", "2", width, None)
    miou = {
        version: _dusk_miou(
            _shipped_checkpoint(repository, version), dusk_root, out / "eval-dusk" / f"v{version}"
        )
        for version in ("1", "2")
    }
    print(side_by_side(before, after, miou), flush=True)
    return {"before": before, "after": after, "miou": miou}


def side_by_side(before: ModelState, after: ModelState, miou: dict[str, float]) -> str:
    """Both versions on the dusk clip: the signals, the flags, the labelled mIoU."""
    rows = [
        ("frames judged", lambda r: f"{r.frames}"),
        ("mean confidence", lambda r: f"{r.mean_confidence:.1%}"),
        ("low-confidence share", lambda r: f"{r.low_confidence_share:.1%}"),
        ("class mix away from its export's", lambda r: f"{r.share_distance:.1%}"),
        ("shift flagged", lambda r: "yes" if r.flags else "no"),
    ]
    lines = ["", f"  {'on the dusk clip':<36}{'version 1':>12}{'version 2':>12}"]
    for name, cell in rows:
        lines.append(f"  {name:<36}{cell(before.report):>12}{cell(after.report):>12}")
    lines.append(
        f"  {'mIoU on labelled dusk scenes':<36}{miou['1']:>12.1%}{miou['2']:>12.1%}"
        "  (version 1: the same iterations, adapted to daylight: the control)"
    )
    return "\n".join(lines)
