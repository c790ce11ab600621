"""An engine compiled at export time, like a TensorRT plan: the serving graph through
``torch.export`` and AOTInductor into ``model.pt2``, with ``compiled.json`` recording what it was
built for (device, GPU, torch and CUDA versions, precision).

The serving engine loads the package in a fraction of a second (no compile at server start) when
the machine matches; otherwise it falls back to the eager graph and says why. The package keeps
the ONNX export's dynamic batch, height and width.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from cycada.errors import ExportError
from cycada.export.onnx_export import INPUT_NAME, MAX_SIDE, example_input
from cycada.models.endpoints import Endpoint
from cycada.models.graphs import serving_graph
from cycada.models.packages import INFO, PACKAGE, load_package, machine_signature
from cycada.serving.engines import TorchEngine

LOGGER = logging.getLogger("cycada.export")


def compile_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


MIN_SIDE = 64  # smaller frames run the eager graph (the package's guards need every feature
# map of the network wider than one pixel)


def _package_input(
    endpoint: Endpoint, size: tuple[int, int] | None = None
) -> tuple[torch.Tensor, dict]:
    """The example batch and dynamic shapes of the package. Segmenters and generators take
    heights and widths that are multiples of their stride, at least MIN_SIDE (the engine pads
    other sizes, see :class:`PaddedPackage`): the padding arithmetic inside the ONNX graph would
    otherwise become guards that torch.export cannot prove for every size. ``size`` (width,
    height) sets the example, whose sizes Inductor tunes its kernels for."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    if endpoint.kind == "classify":
        height = torch.export.Dim("height", min=1, max=MAX_SIDE)
        width = torch.export.Dim("width", min=1, max=MAX_SIDE)
        return example_input(endpoint), {INPUT_NAME: {0: batch, 1: height, 2: width}}
    multiple = endpoint.multiple
    low, high = -(-MIN_SIDE // multiple), MAX_SIDE // multiple
    height = multiple * torch.export.Dim("rows", min=low, max=high)
    width = multiple * torch.export.Dim("columns", min=low, max=high)
    rows, columns = low * multiple, (low + 1) * multiple
    if size is not None:  # rounded up to the stride, inside the package's range
        columns, rows = (min(high, max(low, -(-side // multiple))) * multiple for side in size)
    example = torch.zeros(2, rows, columns, endpoint.in_channels, dtype=torch.uint8)
    return example, {INPUT_NAME: {0: batch, 1: height, 2: width}}


def compile_package(
    endpoint: Endpoint,
    folder: Path,
    device: torch.device,
    half: bool,
    size: tuple[int, int] | None = None,
    autotune: bool = False,
) -> Path:
    """Write ``folder/model.pt2`` and ``folder/compiled.json``; returns the package path.
    ``size`` (width, height): the frame size to tune for; ``autotune``: Inductor's
    max_autotune (kernel choices benchmarked at that size)."""
    graph = serving_graph(endpoint, half).to(device)
    example, dynamic_shapes = _package_input(endpoint, size)
    try:
        program = torch.export.export(graph, (example.to(device),), dynamic_shapes=dynamic_shapes)
        path = torch._inductor.aoti_compile_and_package(
            program,
            package_path=str(folder / PACKAGE),
            inductor_configs={"max_autotune": True} if autotune else {},
        )
    except Exception as exc:  # export and inductor raise many types; keep the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(
            f"{endpoint.name}: compiling the AOTInductor package failed ({first})"
        ) from exc
    info = {**machine_signature(device), "precision": "fp16" if half else "fp32"}
    if endpoint.kind != "classify":
        info.update(multiple=endpoint.multiple, min_side=MIN_SIDE)
        info.update(tuned_for=list(example.shape[1:3]), max_autotune=autotune)
    (folder / INFO).write_text(json.dumps(info, indent=2) + "\n")
    return Path(path)


def package_runner(folder: Path, device: torch.device, half: bool):
    """numpy batch → numpy outputs through the package (for the parity check)."""
    runner, why = load_package(folder, device, half)
    if runner is None:
        raise ExportError(f"{folder / PACKAGE}: {why}")

    def run(batch: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            outputs = runner(torch.from_numpy(batch).to(device))
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        return [output.cpu().numpy() for output in outputs]

    return run


CHOICE = "engine_choice.json"


def median_ms(run, batch: np.ndarray, repeats: int = 5, warmup: int = 3) -> float:
    """Median wall time of ``run(batch)`` in ms, after ``warmup`` calls (OpenVINO compiles
    kernels for a new shape over its first few runs: one warm-up call left it 2-6x slow)."""

    for _ in range(warmup):
        run(batch)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(batch)
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


GRAPHS = "+cuda_graphs"
# the PyTorch engines timed on a GPU at export: name → (use the package, CUDA graphs)
CUDA_ENGINES = {
    "eager": (False, False),  # first: the reference the others must agree with
    "eager" + GRAPHS: (False, True),
    "pytorch": (True, False),
    "pytorch" + GRAPHS: (True, True),
}
TIMING_SIZE = (1024, 2048)  # a dashcam frame (height, width): what the GPU engines serve


def time_cuda_engines(
    endpoint: Endpoint, folder: Path, device: torch.device, half: bool, batch: np.ndarray
) -> dict[str, float]:
    """Median ms of each PyTorch engine of :data:`CUDA_ENGINES` on ``batch``, one process: the
    compiled package and eager, each with and without CUDA graphs. An engine whose first output
    disagrees with eager's (under 99 % equal labels or ids; for images, a mean difference over
    2 levels) is left out, with a log line: a fast wrong engine is never chosen."""

    timings, reference = {}, None
    for name, (use_package, graphs) in CUDA_ENGINES.items():
        engine = TorchEngine(
            folder,
            str(device),
            half,
            use_package=use_package,
            cuda_graphs=graphs,
            endpoint=endpoint,
        )
        first = engine.output_order[:1]
        output = engine.run(batch, first)[0].numpy()
        if reference is None:
            reference = output
        elif not agrees(output, reference, endpoint.kind):
            LOGGER.warning(f"{endpoint.name}: {name} disagrees with eager; not a candidate")
            continue
        timings[name] = median_ms(lambda images, e=engine, o=first: e.run(images, o), batch)
        del engine
    return timings


def agrees(output: np.ndarray, reference: np.ndarray, kind: str) -> bool:
    if output.shape != reference.shape:
        return False
    if kind == "translate":
        return float(np.abs(output.astype(int) - reference.astype(int)).mean()) <= 2.0
    return float((output == reference).mean()) >= 0.99


# CUDA graphs become a model's default only when they beat the same engine without them by this
# much on one frame: the server batches dynamically, so every batch size it meets costs a capture
# and its own memory. On an H200 (DRN-C-26, 1024x2048) a 6 % gain in process (7.46 → 7.00 ms)
# came with served throughput at 0.67x of in process, against 0.87-0.89x without graphs before.
GRAPHS_MIN_GAIN = 0.10


def choose_engine(timings_ms: dict[str, float]) -> str:
    """The fastest engine, except that CUDA graphs must gain GRAPHS_MIN_GAIN over the plain."""
    fastest = min(timings_ms, key=timings_ms.get)
    plain = fastest.removesuffix(GRAPHS)
    small_gain = plain in timings_ms and (
        timings_ms[fastest] > (1 - GRAPHS_MIN_GAIN) * timings_ms[plain]
    )
    if plain != fastest and small_gain:
        return min((k for k in timings_ms if not k.endswith(GRAPHS)), key=timings_ms.get)
    return fastest


def record_engine_choice(folder: Path, timings_ms: dict[str, float], device: torch.device) -> str:
    """Write ``engine_choice.json``: the timings of each engine on this machine and the one
    :func:`choose_engine` picks, which the serving engine uses when the model's ``engine``
    parameter is ``auto`` (a name ending in ``+cuda_graphs`` turns on CUDA graphs for it)."""
    fastest = choose_engine(timings_ms)
    record = {
        "default_engine": fastest.removesuffix(GRAPHS),
        "cuda_graphs": fastest.endswith(GRAPHS),
        "timings_ms": {k: round(v, 3) for k, v in timings_ms.items()},
        **machine_signature(device),
    }
    (folder / CHOICE).write_text(json.dumps(record, indent=2) + "\n")
    return fastest
