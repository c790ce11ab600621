"""`cycada demo`: the whole product on one machine, from nothing to served results.

1. synthetic driving scenes (game-style, labelled) and camera-style scenes and clip;
2. the CyCADA segmentation pipeline (``--preset demo``) on them;
3. export to ONNX and a Triton model repository (parity-checked);
4. the embedded tritonserver on loopback;
5. segment the clip (or ``--video PATH``) through gRPC into an overlay MP4;
6. translate a folder of synthetic images into the camera style;
7. a short latency/throughput bench;
8. list every artifact, stop the server.
"""

from __future__ import annotations

import time
from pathlib import Path

from cycada.serving.server import ServerOptions, TritonServer, free_port

SMOKE = [  # --smoke: a minute-scale run for tests, same steps
    "source.iterations=20",
    "pixel.max_steps=6",
    "pixel.crop=32",
    "pixel.generator_width=8",
    "pixel.discriminator_width=8",
    "target.iterations=10",
    "feature.iterations=10",
    "feature.gate_window=4",
    "data.resize_width=128",
    "source.crop=64",
    "target.crop=64",
    "feature.crop=64",
]


def _step(number: int, text: str) -> float:
    print(f"\n[{number}/8] {text}", flush=True)
    return time.perf_counter()


def run_demo(out: Path, video: str | None = None, smoke: bool = False) -> dict[str, str]:
    from cycada.clients.bench import run_bench
    from cycada.clients.translate_dir import translate_dir
    from cycada.clients.video import VideoOptions, segment_video
    from cycada.export.exporter import ExportOptions, export_run
    from cycada.training.data.scene_writer import write_clip, write_scene_dataset
    from cycada.training.seg_config import resolve_seg_config
    from cycada.training.seg_pipeline import run_seg

    started = time.perf_counter()
    data = out / "data"
    count, size = (12, (128, 64)) if smoke else (160, (256, 128))
    t = _step(1, f"synthetic scenes: {count} game-style (labelled) → {count} camera-style")
    write_scene_dataset(data / "gta5", count, "game", "gta5", *size, quiet=False)
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
    clip = data / "drive.mp4"
    if video is None:
        write_clip(clip, 24 if smoke else 150, 512, 256, seed=2)
    print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)

    t = _step(2, "CyCADA: source → pixel (CycleGAN + semantic) → translate → target → feature")
    config = resolve_seg_config(
        "demo", sets=SMOKE if smoke else [], overrides={"data": {"data_root": str(data)}}
    )
    run_dir = out / "run"
    metrics = run_seg(config, run_dir)
    stages = metrics["stages"]
    for stage, values in stages.items():
        print(f"  {stage}: mIoU {values['target']['miou']:.1%} on camera-style val", flush=True)
    print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)

    t = _step(3, "export: ONNX fp32 + fp16, parity on real or synthetic frames, repository")
    repository = out / "model_repository"
    report = export_run(
        run_dir,
        repository,
        ExportOptions(fp16=not smoke),
        log=lambda m: print(f"  {m}", flush=True),
    )
    print(report.table())
    print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)

    t = _step(4, "tritonserver (embedded, Python backend + ONNX Runtime) on loopback")
    options = ServerOptions(
        repository,
        grpc_port=free_port(),
        http_port=free_port(),
        metrics_port=free_port(),
        log_file=out / "tritonserver.log",
    )
    with TritonServer(options) as server:
        print(f"  ready at gRPC {server.grpc_url} in {time.perf_counter() - t:.1f} s", flush=True)
        t = _step(5, f"segment-video {video or clip} through gRPC (JPEG frames)")
        overlay = out / "segmented.mp4"
        segment_video(
            video or str(clip),
            overlay,
            VideoOptions(
                urls=[server.grpc_url],
                encoded=True,
                width=256 if smoke else 512,
                csv_path=out / "class_shares.csv",
            ),
        )
        t = _step(6, "translate-dir: synthetic images → camera style, labels beside")
        summary = translate_dir(
            data / "gta5" / "images",
            out / "translated",
            [server.grpc_url],
            labels=data / "gta5" / "labels",
        )
        print(f"  {summary.line()}", flush=True)
        t = _step(7, "bench: served concurrency sweep and in-process engines")
        run_bench(
            repository,
            "segment",
            server.grpc_url,
            size,
            [1, 2],
            [],
            1.0 if smoke else 3.0,
            1.0,
            out / "bench",
        )
        print((out / "bench" / "bench.md").read_text(), flush=True)
        _step(8, "stopping the server")
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
    print(f"\ncycada demo finished in {time.perf_counter() - started:.0f} s; artifacts:")
    for name, path in artifacts.items():
        print(f"  {name:<38} {path}")
    return {name: str(path) for name, path in artifacts.items()}
