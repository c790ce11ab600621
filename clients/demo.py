"""`cycada demo`: the whole product on one machine, from nothing to served results.

1. synthetic driving scenes (game-style, labelled) and camera-style scenes and clip;
2. the CyCADA segmentation pipeline (``--preset demo``) on them; with ``--video FILE`` the
   target domain is that footage's frames instead (no labels: label-free signals);
3. export to ONNX and a Triton model repository (parity-checked);
4. the embedded tritonserver on loopback;
5. segment the clip (or the ``--video`` footage) through gRPC into an overlay MP4;
6. translate a folder of synthetic images into the camera style;
7. a short latency/throughput bench;
8-10. the loop (:mod:`cycada.clients.demo_shift`): the camera at dusk flagged by the monitor,
   its unsure frames collected, adapted again, version 2 served without a restart, both
   versions side by side (on the demo's own world; with ``--video`` these steps are skipped);
11. list every artifact, stop the server (and, with ``--video``, print the label-free signals of
   source only against adapted on the footage).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from cycada.atomic import make_output_folder
from cycada.clients.bench import run_bench
from cycada.clients.demo_report import SMOKE, stage_lines
from cycada.clients.demo_shift import shift_and_adapt
from cycada.clients.translate_dir import translate_dir
from cycada.clients.video import VideoOptions, segment_video
from cycada.export.exporter import ExportOptions, export_run
from cycada.serving.server import ServerOptions, TritonServer
from cycada.training.segmentation.config import resolve_seg_config
from cycada.training.segmentation.pipeline import run_seg
from cycada.training.segmentation.scene_writer import write_clip, write_scene_dataset


def _step(number: int, text: str) -> float:
    print(f"\n[{number}/11] {text}", flush=True)
    return time.perf_counter()


def label_free_comparison(metrics: dict) -> list[str]:
    """Source only against the adapted model on the held-out target frames."""
    stages = metrics["stages"]
    adapted = metrics["final"]["stage"]
    if "label_free" not in stages.get("source", {}) or "label_free" not in stages[adapted]:
        return ["(no label-free signals recorded)"]
    before, after = stages["source"]["label_free"], stages[adapted]["label_free"]
    rows = [
        ("mean confidence", "mean_confidence"),
        ("low-confidence pixels", "low_confidence_share"),
        ("class-share distance to source labels", "class_share_distance"),
    ]
    lines = [f"{'':<40}{'source only':>12}{adapted:>12}"]
    for name, key in rows:
        lines.append(f"{name:<40}{before[key]:>12.1%}{after[key]:>12.1%}")
    agreement = after.get("agreement_with_source_only")
    if agreement is not None:
        lines.append(f"{'pixels labelled as by source only':<40}{'100.0%':>12}{agreement:>12.1%}")
    return lines


def _write_data(data: Path, video: str | None, smoke: bool) -> tuple[Path, tuple[int, int], int]:
    """Step 1: labelled game-style scenes; without ``video``, camera-style scenes and a clip."""

    count, size = (12, (128, 64)) if smoke else (160, (256, 128))
    if video is None:
        t = _step(1, f"synthetic scenes: {count} game-style (labelled) → {count} camera-style")
    else:
        t = _step(1, f"synthetic scenes: {count} game-style (labelled); target: {video}")
    write_scene_dataset(data / "gta5", count, "game", "gta5", *size, quiet=False)
    clip = data / "drive.mp4"
    if video is None:
        write_scene_dataset(
            data / "cityscapes", count, "camera", "cityscapes", *size, labels=False, quiet=False
        )
        write_scene_dataset(
            data / "cityscapes",
            max(4, count // 8),
            "camera",
            "cityscapes",
            *size,
            split="val",
            seed=1,
            quiet=False,
        )
        write_clip(clip, 24 if smoke else 150, 512, 256, seed=2)
    print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)
    return clip, size, count


def _train(data: Path, run_dir: Path, video: str | None, count: int, smoke: bool) -> dict:
    """Step 2: the segmentation pipeline with ``--preset demo`` (the footage as target)."""

    if video is None:
        what = "camera-style scenes"
        target = {}
    else:  # the footage is the target domain: up to `count` frames spread over it, no labels
        what = f"the frames of {video}"
        target = {
            "target": f"video:{video}",
            "target_fps": float("inf"),
            "target_max_frames": count,
        }
    t = _step(2, f"CyCADA to {what}: source → pixel (+ semantic) → translate → target → feature")
    config = resolve_seg_config(
        "demo",
        sets=SMOKE if smoke else [],
        overrides={"data": {"data_root": str(data), **target}},
    )
    metrics = run_seg(config, run_dir)
    for line in stage_lines(metrics):
        print(f"  {line}", flush=True)
    print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)
    return metrics


def _export(run_dir: Path, repository: Path, smoke: bool) -> None:
    """Step 3: ONNX, parity and the model repository."""

    t = _step(3, "export: ONNX fp32 + fp16, parity on real or synthetic frames, repository")
    # the demo serves version 1, then the run adapted to dusk as version 2: the repository of an
    # earlier demo in the same folder goes (its runs are reused when unchanged)
    shutil.rmtree(repository, ignore_errors=True)
    report = export_run(
        run_dir,
        repository,
        ExportOptions(fp16=not smoke),
        log=lambda m: print(f"  {m}", flush=True),
    )
    print(report.table())
    print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)


def _serve_and_use(
    out: Path,
    repository: Path,
    data: Path,
    source: str,
    size: tuple[int, int],
    smoke: bool,
    shift_loop: bool,
) -> Path:
    """Steps 4-11: the server, then segment-video, translate-dir and bench through it; the
    shift loop (steps 8-10) on the demo's own world."""

    t = _step(4, "tritonserver (embedded, Python backend + ONNX Runtime) on loopback")
    options = ServerOptions.on_free_ports(repository, log_file=out / "tritonserver.log")
    with TritonServer(options) as server:
        print(f"  ready at gRPC {server.grpc_url} in {time.perf_counter() - t:.1f} s", flush=True)
        _step(5, f"segment-video {source} through gRPC (JPEG frames)")
        overlay = out / "segmented.mp4"
        segment_video(
            source,
            overlay,
            VideoOptions(
                urls=[server.grpc_url],
                encoded=True,
                width=256 if smoke else 512,
                csv_path=out / "class_shares.csv",
            ),
        )
        _step(6, "translate-dir: synthetic images → camera style, labels beside")
        summary = translate_dir(
            data / "gta5" / "images",
            out / "translated",
            [server.grpc_url],
            labels=data / "gta5" / "labels",
        )
        print(f"  {summary.line()}", flush=True)
        _step(7, "bench: served concurrency sweep and in-process engines")
        seconds = 1.0 if smoke else 3.0
        run_bench(
            repository, "segment", server.grpc_url, size, [1, 2], [], seconds, 1.0, out / "bench"
        )
        print((out / "bench" / "bench.md").read_text(), flush=True)
        if shift_loop:
            shift_and_adapt(out, data, out / "run", repository, server, smoke)
        else:
            print("\n[8-10/11] the shift loop runs on the demo's own world (without --video)")
        _step(11, "stopping the server")
    return overlay


def run_demo(out: Path, video: str | None = None, smoke: bool = False) -> dict[str, str]:
    started = time.perf_counter()
    make_output_folder(out)
    data = (out / "data").resolve()  # absolute: the run's config.yaml repeats it from anywhere
    run_dir, repository = out / "run", out / "model_repository"
    clip, size, count = _write_data(data, video, smoke)
    metrics = _train(data, run_dir, video, count, smoke)
    _export(run_dir, repository, smoke)
    overlay = _serve_and_use(
        out, repository, data, video or str(clip), size, smoke, shift_loop=video is None
    )
    artifacts = {
        "run (checkpoints, metrics, panels)": run_dir,
        "translated source set (pixel stage)": run_dir / "translated",
        "model repository": repository,
        "segmented video": overlay,
        "per-frame class shares": out / "class_shares.csv",
        "translated folder (translate-dir)": out / "translated",
        "bench (json, csv, md, png)": out / "bench",
        "server log": out / "tritonserver.log",
    }
    if video is None:
        artifacts.update(
            {
                "dusk clip through versions 1 and 2": out / "dusk-v1.mp4",
                "frames collected at dusk": out / "collected",
                "run adapted to them (version 2)": out / "run-dusk",
            }
        )
    if video is not None:
        print(f"\nlabel-free signals on held-out frames of {video} (no labels; see the README):")
        for line in label_free_comparison(metrics):
            print(f"  {line}")
    print(f"\ncycada demo finished in {time.perf_counter() - started:.0f} s; artifacts:")
    for name, path in artifacts.items():
        print(f"  {name:<38} {path}")
    return {name: str(path) for name, path in artifacts.items()}
