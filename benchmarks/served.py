"""Served (Triton, gRPC) vs in-process throughput of one segmentation model, same card.

    cycada bench served --network drn26 --size 2048x1024 --out results/

Builds a repository from RUN_DIR (``--run``; by default a DRN-C-26 with random weights, which
is enough for speed), starts the real tritonserver with ``--instances`` Python-backend
instances, and measures in the same command:

* in process: every engine the server can run here, one after another (on a GPU: PyTorch fp16
  channels_last eager, and the AOTInductor package with ``--compile``, each with and without
  CUDA graphs; on a CPU: ONNX Runtime), uint8 frames in host memory → labels in host memory,
  batch 1 and 8; and the same from JPEG bytes (decoded on the GPU with nvJPEG where available);
* served: raw uint8 frames and JPEG frames over gRPC at increasing concurrency, the server
  running the engine the export recorded as fastest (``--compile``) or its default.

The ratio served/in-process uses the best in-process engine's frames/s as the denominator.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from cycada.bench_results import write_results
from cycada.benchmarks.batcher import variant_config
from cycada.checkpoint import save_modules
from cycada.clients.load import run_load
from cycada.command_line import add_network, add_repository, at_least_one, command_parser, seconds
from cycada.export.exporter import ExportOptions, export_run
from cycada.models.generators import build_generator
from cycada.models.segmenters import build_segmenter
from cycada.serving.engines import select_engine
from cycada.serving.server import ServerOptions, TritonServer
from cycada.sizes import image_size
from cycada.training.segmentation.label_spaces import LABEL_SPACES
from cycada.training.segmentation.scenes import render_scene


def random_run(
    model: str, folder: Path, generators: str = "", seed: int = 0, label_space: str = "cityscapes19"
) -> Path:
    """A run folder with an untrained segmenter (of ``label_space``'s classes), and untrained
    generators when ``generators`` names one (resnet6, resnet9): enough for speed tests and for
    serving tests. The same seed gives the same weights (so their exported graphs come from
    the graph cache)."""

    space = LABEL_SPACES[label_space]
    torch.manual_seed(seed)
    network = build_segmenter(model, space.num_classes)
    meta = {"stage": "source", "task": "seg", "model": model, "class_names": list(space.classes)}
    save_modules(folder / "checkpoints" / "source.safetensors", {"task_src": network}, {}, meta)
    if generators:
        width = 8
        nets = {
            name: build_generator(generators, 3, 3, width)
            for name in ("gen_src2tgt", "gen_tgt2src")
        }
        config = {"pixel": {"generator": generators, "generator_width": width}}
        save_modules(
            folder / "checkpoints" / "pixel.safetensors", nets, config, {**meta, "stage": "pixel"}
        )
    return folder


def test_frame(height: int, width: int) -> np.ndarray:

    return render_scene(7, width, height, "camera")[0]


def _fps(run, frames: int, seconds: float) -> float:
    run()
    run()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run()
        count += frames
    return count / (time.perf_counter() - started)


def engine_variants(folder: Path) -> dict[str, dict[str, str]]:
    """The engines to time in process, as model parameters: on a GPU the compiled package (when
    the export made one) and eager PyTorch, each with and without CUDA graphs; on a CPU the
    engine the server would pick."""

    if not torch.cuda.is_available():
        return {"auto": {}}
    variants = {}
    if (folder / "model.pt2").exists():
        variants["package"] = {"engine": "pytorch"}
        variants["package+cuda_graphs"] = {"engine": "pytorch", "cuda_graphs": "true"}
    variants["eager"] = {"engine": "eager"}
    variants["eager+cuda_graphs"] = {"engine": "eager", "cuda_graphs": "true"}
    return variants


def in_process_engine(
    folder: Path, parameters: dict[str, str], frame: np.ndarray, jpeg: np.ndarray, seconds: float
) -> dict:
    """Frames/s of one engine as the server runs it: raw uint8 frames at batch 1 and 8 (and the
    p50 at batch 1), and JPEG bytes decoded the way the encoded-frame model decodes them."""

    engine = select_engine(folder, parameters, "GPU", 0)
    results: dict = {"engine": engine.name}
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for batch in (1, 8):
        frames = np.ascontiguousarray(np.repeat(frame[None], batch, 0))

        def raw(frames=frames):
            labels = engine.run(frames, ["labels"])[0]
            np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
            sync()

        results[f"raw_batch{batch}_fps"] = round(_fps(raw, batch, seconds), 2)
        if batch == 1:
            times = []
            for _ in range(20):
                started = time.perf_counter()
                raw()
                times.append((time.perf_counter() - started) * 1000)
            results["raw_batch1_p50_ms"] = round(float(np.median(times)), 2)
    decoder = engine.decoder()

    def encoded():
        image = decoder.stack([decoder.decode(jpeg)])
        labels = engine.run(image, ["labels"])[0]
        np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
        sync()

    results["jpeg_batch1_fps"] = round(_fps(encoded, 1, seconds), 2)
    return results


def in_process(folder: Path, frame: np.ndarray, jpeg: np.ndarray, seconds: float) -> dict:
    """Every engine variant of :func:`engine_variants`, one after another in this process; the
    best is the denominator of the served ratio."""

    engines = {}
    for name, parameters in engine_variants(folder).items():
        engines[name] = in_process_engine(folder, parameters, frame, jpeg, seconds)
        print(name, json.dumps(engines[name]), flush=True)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    best = max(engines, key=lambda name: _best_fps(engines[name]))
    return {"engines": engines, "best": best, "best_fps": _best_fps(engines[best])}


def _best_fps(row: dict) -> float:
    return max(v for k, v in row.items() if k.endswith("_fps"))


def set_instances(repository: Path, model: str, count: int) -> None:

    config = repository / model / "config.pbtxt"
    config.write_text(variant_config(config.read_text(), count, None))


def set_parameters(repository: Path, model: str, parameters: dict[str, str]) -> None:
    """Set Python-backend parameters (``engine``, ``cuda_graphs``, ...) of a model's config,
    replacing a parameter of the same key."""
    config = repository / model / "config.pbtxt"
    text = config.read_text()
    for key, value in parameters.items():
        line = f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'
        pattern = (
            rf'parameters \{{ key: "{re.escape(key)}" value: \{{ string_value: "[^"]*" \}} \}}\n'
        )
        text, found = re.subn(pattern, line, text)
        text = text if found else text + line
    config.write_text(text)


def _key_values(text: str) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    if any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError(f"'{text}': expected KEY=VALUE[,KEY=VALUE...]")
    return dict(pairs)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = command_parser(
        "bench served",
        __doc__.splitlines()[0],
        "cycada bench served --network fastscnn --size 512x256 --seconds 2 --out results/",
    )
    parser.add_argument("--run", type=Path, help="training run to serve (default: random DRN)")
    add_network(parser, default="drn26")
    parser.add_argument(
        "--size", type=image_size, default=(2048, 1024), help="WIDTHxHEIGHT of the frames"
    )
    parser.add_argument("--instances", type=at_least_one, default=2)
    parser.add_argument("--concurrency", default="1,4,8,16,32")
    parser.add_argument("--seconds", type=seconds(), default=5.0)
    parser.add_argument("--weights-only", action="store_true", help="skip ONNX (GPU PyTorch)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="export an AOTInductor package too (cycada export --compile); the server then "
        "runs the engine the export measured fastest",
    )
    parser.add_argument(
        "--compile-autotune",
        action="store_true",
        help="with --compile: Inductor's max_autotune (the package is tuned for --size either way)",
    )
    add_repository(parser, default=None, help="build the repository here and keep it")
    parser.add_argument(
        "--server-parameters",
        type=_key_values,
        default={},
        metavar="KEY=VALUE,...",
        help="model parameters for the served segment models, e.g. engine=eager,"
        "cuda_graphs=false (default: what the export recorded)",
    )
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    if args.weights_only and args.compile:
        parser.error("--weights-only cannot be combined with --compile (parity needs ONNX)")
    return args


def _repository(args: argparse.Namespace, scratch: Path) -> Path:
    """The run (given, or random weights) exported, the segment models at ``--instances``."""

    run_dir = args.run or random_run(args.network, scratch / "run")
    repository = args.repository or scratch / "repository"
    options = ExportOptions(
        fp16=False,
        onnx=not args.weights_only,
        compile=args.compile,
        compile_size=args.size,  # tuned for the frames this bench serves
        compile_autotune=args.compile_autotune,
    )
    export_run(run_dir, repository, options, log=lambda m: print(m, flush=True))
    for model in ("segment", "segment_encoded"):
        set_instances(repository, model, args.instances)
        set_parameters(repository, model, args.server_parameters)
    return repository


def _served(repository: Path, frame: np.ndarray, jpeg: np.ndarray, args, results: dict) -> None:
    """Start the server (its start-to-ready time), warm every instance, then raw and JPEG
    frames over gRPC at each concurrency, into ``results``."""

    server_options = ServerOptions.on_free_ports(repository, shm_bytes=64 * 1024 * 1024)
    started = time.perf_counter()
    served: dict = {"raw": [], "jpeg": []}
    inputs = (
        ("raw", "segment", "images", frame[None]),
        ("jpeg", "segment_encoded", "frames", jpeg[None]),
    )
    with TritonServer(server_options) as server:
        results["server_ready_s"] = round(time.perf_counter() - started, 2)
        # first requests at a new size tune kernels (cudnn benchmark, nvJPEG set-up) per
        # instance: send a few to every instance before any timed window
        for _, model, input_name, array in inputs:
            run_load(
                server.grpc_url, model, array, 2 * args.instances, 1.0, 0.0, input_name=input_name
            )
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            for name, model, input_name, array in inputs:
                load = run_load(
                    server.grpc_url, model, array, concurrency, args.seconds, input_name=input_name
                )
                served[name].append(load.row())
                print(name, json.dumps(load.row()), flush=True)
        results["server_memory_mb"] = server.memory_mb()
    results["served"] = served
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(server.log_file, args.out / "tritonserver.log")
    results["p50_served_c1_ms"] = served["raw"][0]["p50_ms"] if served["raw"] else float("nan")
    best_served = max(row["throughput_per_s"] for rows in served.values() for row in rows)
    results["served_over_in_process"] = round(best_served / results["in_process"]["best_fps"], 3)


def _report(results: dict, model: str) -> str:
    width, height = results["size"]
    in_process = results["in_process"]
    lines = [
        f"# served vs in-process, {model} {width}x{height}",
        "",
        "| in process | engine | raw batch 1 | raw batch 8 | JPEG batch 1 | p50 batch 1 ms |",
        "| --- | --- | --- | --- | --- | --- |",
        *(
            f"| {name} | {row['engine']} | {row['raw_batch1_fps']} | {row['raw_batch8_fps']} | "
            f"{row['jpeg_batch1_fps']} | {row['raw_batch1_p50_ms']} |"
            for name, row in in_process["engines"].items()
        ),
        f"\nbest in process: {in_process['best']} ({in_process['best_fps']} frames/s)",
        "",
        "| input | concurrency | frames/s | p50 ms | p99 ms | errors |",
        "| --- | --- | --- | --- | --- | --- |",
        *(
            f"| {name} | {r['concurrency']} | {r['throughput_per_s']} | {r['p50_ms']} | "
            f"{r['p99_ms']} | {r['errors']} |"
            for name, rows in results["served"].items()
            for r in rows
        ),
        f"\nbest served / best in-process: {results['served_over_in_process']}",
        f"p50 at concurrency 1: served {results['p50_served_c1_ms']} ms vs in-process "
        f"{in_process['engines'][in_process['best']]['raw_batch1_p50_ms']} ms; server ready in "
        f"{results['server_ready_s']} s; server memory {results['server_memory_mb']} MB; bytes "
        f"per frame: raw {results['raw_bytes']}, JPEG {results['jpeg_bytes']}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    with tempfile.TemporaryDirectory(prefix="cycada-bench-") as scratch:
        return _bench(args, Path(scratch))


def _bench(args: argparse.Namespace, scratch: Path) -> int:
    width, height = args.size
    repository = _repository(args, scratch)
    frame = test_frame(height, width)
    ok, jpeg = cv2.imencode(
        ".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90]
    )
    jpeg = jpeg.reshape(-1)
    results: dict = {
        "size": [width, height],
        "instances": args.instances,
        "raw_bytes": int(frame.nbytes),
        "jpeg_bytes": int(jpeg.nbytes),
    }
    version = max(int(p.name) for p in (repository / "segment").iterdir() if p.name.isdigit())
    folder = repository / "segment" / str(version)
    results["in_process"] = in_process(folder, frame, jpeg, args.seconds)
    if (folder / "engine_choice.json").exists():
        results["export_engine_choice"] = json.loads((folder / "engine_choice.json").read_text())
    _served(repository, frame, jpeg, args, results)
    report = _report(results, args.network)
    write_results(args.out, "served", results, report)
    print(report, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
