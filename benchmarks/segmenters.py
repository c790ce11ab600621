"""Inference speed of the segmenters on this machine, every engine in one process: the bare
network (class scores at its own resolution) against the full serving graph (uint8 frame in,
labels and confidence out), for PyTorch eager, AOTInductor packages, ONNX Runtime (CPU or CUDA),
TensorRT and OpenVINO (fp32, bf16).

    cycada bench segmenters --network fastscnn --device cpu --size 960x540 --run runs/demo/run

The CPU engines run the served graph, whose cost after the network depends on the scores: it
upsamples two classes a block and computes every class only where a third is within reach
(:mod:`cycada.models.block_labels`), about 1 % of the blocks for a trained network, all of them
for random weights. ``--run`` takes a trained run's weights; the row says the share.

Every engine runs the same network on the same input in one process (median of ``--repeat``
timed runs after warm-up), so the ratio between them is meaningful on a shared machine; the
graph/network ratio says what the work after the network costs.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from cycada.bench_results import write_results
from cycada.command_line import add_network, at_least_one, command_parser
from cycada.deps import onnxruntime
from cycada.errors import CycadaError
from cycada.export import openvino_export
from cycada.export.onnx_export import export_onnx
from cycada.export.run_models import load_run_endpoints
from cycada.models.block_labels import BlockLabels
from cycada.models.endpoints import Endpoint
from cycada.models.graphs import SegmentationGraph
from cycada.models.segmenters import build_segmenter
from cycada.serving.engines import OnnxEngine, OpenVinoEngine
from cycada.sizes import image_size

PARTS = ("network", "graph")


class ScoreMaps(nn.Module):
    """The bare network: class scores at its output stride (what the graph adds work after)."""

    def __init__(self, segmenter: nn.Module):
        super().__init__()
        self.segmenter = segmenter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmenter.score_maps(x)


def _frame(shape: tuple) -> torch.Tensor:
    """The benchmark's uint8 frames (N, H, W, 3): the same noise in every part and process."""
    batch, height, width = shape
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, height, width, 3), dtype=torch.uint8, generator=generator)


def _segmenter(name: str | None, run: Path | None) -> tuple[str, nn.Module]:
    """The architecture and network measured: ``run``'s trained segmenter, else ``name`` with
    random weights (the same compute, but every block exact in the served graph)."""
    if run is None:
        return name, build_segmenter(name, 19)
    task = load_run_endpoints(run)[0]
    if task.kind != "segment":
        raise CycadaError(f"--run {run}: a {task.kind} run; expected a segmentation run")
    return task.meta["model"], task.network


def _exact_share(model: nn.Module, shape: tuple) -> float:
    """The share of the served graph's blocks that ``model`` has computed with every class, on
    the benchmark's frame (CPU, fp32)."""
    graph = SegmentationGraph(model, model.output_stride, logits=True).eval()
    with torch.inference_mode():
        scores = graph(_frame(shape))[-1]
    return round(BlockLabels(model.output_stride).exact_share(scores), 4)


def _parts(model: nn.Module, shape: tuple, half: bool, device) -> dict[str, tuple]:
    """part → (module, input): the network on the padded float frame, the serving graph on the
    uint8 frame itself."""
    batch, height, width = shape
    stride = model.output_stride
    padded = (-(-height // stride) * stride, -(-width // stride) * stride)
    x = torch.zeros(batch, 3, *padded, device=device)
    frame = _frame(shape).to(device)
    if half:
        x = x.half().to(memory_format=torch.channels_last)
    graph = SegmentationGraph(model, stride, half=half).eval()
    return {"network": (ScoreMaps(model).eval(), x), "graph": (graph, frame)}


def _median_ms(run, repeat: int) -> float:
    return _medians_ms({"run": run}, repeat)["run"]


def _medians_ms(runs: dict, repeat: int) -> dict[str, float]:
    """name → median ms of ``repeat`` calls, the runs taken in turn (network, graph, network,
    ...): on a shared machine a slow spell then costs both alike, not one of them."""
    for run in runs.values():
        run()
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


# AOTInductor packages compiled now, as `cycada export --compile` does: name → Inductor configs
COMPILED_ENGINES = {"aoti": {}, "aoti-autotune": {"max_autotune": True}}


def _compiled_ms(name, shape, device, configs, repeat, threads, part) -> float | str:
    """(In a child process.) Median ms of an AOTInductor package of one part, fp16 on a GPU;
    the reason as a string when it cannot be built."""
    torch.set_num_threads(threads)
    target = torch.device(device)
    half = target.type == "cuda"
    model = build_segmenter(name, 19).eval().to(target)
    if half:
        model = model.half()
        torch.backends.cudnn.benchmark = True
    module, x = _parts(model, shape, half, target)[part]
    with tempfile.TemporaryDirectory() as folder:
        try:
            program = torch.export.export(module, (x,))
            package = torch._inductor.aoti_compile_and_package(
                program, package_path=str(Path(folder) / "model.pt2"), inductor_configs=configs
            )
            runner = torch._inductor.aoti_load_package(
                package, device_index=(target.index or 0) if half else -1
            )
        except Exception as exc:  # no compiler, an unsupported op: say so, go on
            return f"failed: {str(exc).strip().splitlines()[0][:120]}"

        def once():
            with torch.inference_mode():
                runner(x)
            if half:
                torch.cuda.synchronize()

        return _median_ms(once, repeat)


def _in_child(function, job: tuple) -> float | str:
    """``function(*job)`` in a fresh process: a compiled engine that crashes it (one segfaulted
    on load on an H200 with PyTorch 2.11) is reported, and the other engines still run."""

    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        try:
            return pool.submit(function, *job).result()
        except concurrent.futures.process.BrokenProcessPool:
            return "crashed (the process died while compiling, loading or running it)"


ONNX_ENGINES = {  # engine → (runtime, ONNX Runtime provider or OpenVINO precision)
    "onnxruntime": ("onnxruntime", None),  # CUDA on a GPU, else CPU
    "tensorrt": ("onnxruntime", "TensorrtExecutionProvider"),
    "openvino": ("openvino", "f32"),
    "openvino-bf16": ("openvino", "bf16"),
}


def _onnx_files(model: nn.Module, shape: tuple, folder: Path) -> dict[str, Path]:
    """The parts as ONNX (fp32): the network traced at this shape, the graph exported as
    `cycada export` does: served in blocks (the CPU engines), every class upsampled (the graph
    a TensorRT plan is built from, ``graph-dense``)."""

    network, x = _parts(model, shape, False, "cpu")["network"]
    files = {"network": folder / "network.onnx"}
    torch.onnx.export(
        network, (x,), str(files["network"]), opset_version=17, input_names=["images"],
        output_names=["scores"], dynamo=False,
    )  # fmt: skip
    endpoint = Endpoint("segment", "segment", model, model.output_stride, 3)
    for part, blocks in (("graph", True), ("graph-dense", False)):
        files[part] = export_onnx(endpoint, folder / f"{part}.onnx", cache=False, blocks=blocks)
    return files


def _onnx_ms(
    model: nn.Module, shape: tuple, gpu: bool, wanted: tuple, threads: int, repeat: int
) -> dict[str, dict[str, float | str]]:
    """engine → part → median ms (or why not) of the ONNX engines on the parts' fp32 graphs."""
    timings: dict[str, dict[str, float | str]] = {}
    inputs = {part: x.cpu().numpy() for part, (_, x) in _parts(model, shape, False, "cpu").items()}
    with tempfile.TemporaryDirectory() as folder:
        files = _onnx_files(model.float().cpu(), shape, Path(folder))
        for engine in wanted:
            engines = _serving_engines(files, engine, gpu, threads)
            if isinstance(engines, str):
                timings[engine] = {part: engines for part in PARTS}
                continue
            frames = {p: inputs["network" if p == "network" else "graph"] for p in engines}
            runs = {p: lambda e=e, x=frames[p]: e.run(x, e.outputs) for p, e in engines.items()}
            timings[engine] = _medians_ms(runs, repeat)
    return timings


def _serving_engines(files: dict, engine: str, gpu: bool, threads: int) -> dict | str:
    """part → the serving engine (as the Python backend runs it) of one ONNX engine, or why it
    is not available here."""

    runtime, setting = ONNX_ENGINES[engine]
    if runtime == "openvino":
        if not openvino_export.available():
            return "not available (pip install cycada[cpu] brings OpenVINO)"
        if engine not in openvino_export.precisions():
            return f"not available (this CPU does not compute in {setting})"
        return {part: OpenVinoEngine(files[part], setting, threads) for part in PARTS}

    provider = setting or ("CUDAExecutionProvider" if gpu else "CPUExecutionProvider")
    if provider not in onnxruntime().get_available_providers():
        return f"not available ({provider} missing)"
    graph = files["graph-dense" if gpu else "graph"]  # a GPU serves every class upsampled
    engines = {
        "network": OnnxEngine(files["network"], [provider], threads),
        "graph": OnnxEngine(graph, [provider], threads),
    }
    if gpu:  # model.onnx too: the onnxruntime profile on a GPU serves it (blocks, NonZero)
        engines["graph-blocks"] = OnnxEngine(files["graph"], [provider], threads)
    return engines


def bench(
    name: str | None,
    height: int,
    width: int,
    batch: int,
    threads: int,
    repeat: int,
    device: str = "cpu",
    engines: tuple[str, ...] = ("eager", "onnxruntime"),
    run: Path | None = None,
) -> dict:
    """Median ms per batch of the network and of the serving graph, for every engine asked for
    and available here, one process (the compiled ones in a child process each): ``eager``
    PyTorch (fp16 channels-last on CUDA), ``aoti`` and ``aoti-autotune`` (an AOTInductor
    package compiled now, as `cycada export --compile` does, without and with Inductor's
    max_autotune), ``onnxruntime`` (CUDA provider on a GPU, else CPU), ``tensorrt`` (ONNX
    Runtime's TensorRT provider, when installed), ``openvino`` and ``openvino-bf16`` (CPU).
    ``run`` measures a trained run's segmenter (the compiled engines, whose cost does not
    depend on the weights, build ``name`` with random ones)."""
    torch.set_num_threads(threads)
    target = torch.device(device)
    half = target.type == "cuda"
    name, model = _segmenter(name, run)
    model = model.eval()
    shape = (batch, height, width)
    share = None if half else _exact_share(model, shape)
    model = model.to(target)
    if half:  # as the serving engine runs it: fp16, NHWC, cuDNN autotuned
        model = model.half().to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True

    def synchronised(run):
        def once():
            run()
            if half:
                torch.cuda.synchronize()

        return once

    timings: dict[str, dict[str, float | str]] = {}
    if "eager" in engines:
        with torch.inference_mode():
            parts = _parts(model, shape, half, target)
            runs = {p: synchronised(lambda m=m, x=x: m(x)) for p, (m, x) in parts.items()}
            timings["eager"] = _medians_ms(runs, repeat)
        print(json.dumps({"engine": "eager", "ms": timings["eager"]}), flush=True)
    for engine, configs in COMPILED_ENGINES.items():
        if engine in engines:
            started = time.perf_counter()
            timings[engine] = {
                part: _in_child(_compiled_ms, (name, shape, device, configs, repeat, threads, part))
                for part in PARTS
            }
            seconds = round(time.perf_counter() - started, 1)
            row = {"engine": engine, "ms": timings[engine], "compile_and_time_s": seconds}
            print(json.dumps(row), flush=True)
    wanted = tuple(e for e in ONNX_ENGINES if e in engines)
    if wanted:
        timings.update(_onnx_ms(model, shape, half, wanted, threads, repeat))
    return {
        "model": name,
        "device": torch.cuda.get_device_name(target) if half else "cpu",
        "input": f"{batch}x{height}x{width}x3 uint8" + (" fp16" if half else ""),
        "threads": threads,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "exact_blocks": share,  # of the served graph (CPU engines): its cost depends on it
        **_summary(timings, batch),
    }


def _summary(timings: dict[str, dict[str, float | str]], batch: int) -> dict:
    """The timings rounded, each engine's graph/network ratio and graph frames/s, the fastest."""
    ms = {
        engine: {part: round(v, 2) if isinstance(v, float) else v for part, v in parts.items()}
        for engine, parts in timings.items()
    }
    ratios = {
        engine: round(parts["graph"] / parts["network"], 2)
        for engine, parts in timings.items()
        if all(isinstance(parts[p], float) for p in PARTS)
    }
    graphs = {e: p["graph"] for e, p in timings.items() if isinstance(p["graph"], float)}
    return {
        "ms": ms,
        "graph_over_network": ratios,
        "graph_fps": {k: round(1000 * batch / v, 1) for k, v in graphs.items()},
        "fastest_graph": min(graphs, key=graphs.get) if graphs else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        "bench segmenters",
        __doc__.splitlines()[0],
        "cycada bench segmenters --network fastscnn --size 480x270 --engines onnxruntime",
    )
    add_network(parser, default="fastscnn,drn26", many=True, old="--models")
    parser.add_argument("--size", type=image_size, default=(512, 256), help="WIDTHxHEIGHT")
    parser.add_argument("--batch", type=at_least_one, default=1)
    parser.add_argument("--threads", type=at_least_one, default=2)
    parser.add_argument("--repeat", type=at_least_one, default=10)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument(
        "--engines",
        default="eager,aoti,onnxruntime,tensorrt,openvino,openvino-bf16",
        help="comma-separated: eager, aoti, aoti-autotune (Inductor's max_autotune), "
        "onnxruntime, tensorrt, openvino, openvino-bf16 (those missing are reported)",
    )
    parser.add_argument(
        "--run", type=Path, help="a trained segmentation run's network (default: random weights)"
    )
    parser.add_argument("--out", type=Path, help="write segmenters.json here")
    args = parser.parse_args(argv)
    width, height = args.size
    rows = []
    engines = tuple(engine for engine in args.engines.split(",") if engine)
    known = ("eager", *COMPILED_ENGINES, *ONNX_ENGINES)
    unknown = [engine for engine in engines if engine not in known]
    if unknown or not engines:
        parser.error(f"--engines {args.engines}: expected some of {', '.join(known)}")
    for name in [None] if args.run else args.network:
        rows.append(
            bench(
                name, height, width, args.batch, args.threads, args.repeat, args.device, engines,
                args.run,
            )
        )  # fmt: skip
        print(json.dumps(rows[-1]))
    write_results(args.out, "segmenters", {"size": [width, height], "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
