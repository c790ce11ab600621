"""An engine compiled at export time, like a TensorRT plan: the serving graph through
``torch.export`` and AOTInductor into ``model.pt2``, with ``compiled.json`` recording what it was
built for (device, GPU, torch and CUDA versions, precision).

The serving engine loads the package in a fraction of a second (no compile at server start) when
the machine matches; otherwise it falls back to the eager graph and says why. The package keeps
the ONNX export's dynamic batch, height and width.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cycada.errors import ExportError
from cycada.export.onnx_export import INPUT_NAME, MAX_SIDE, example_input, serving_graph
from cycada.export.run_models import Endpoint

PACKAGE = "model.pt2"
INFO = "compiled.json"


def machine_signature(device: torch.device) -> dict[str, str]:
    """What a package must match to load: device type and GPU name, torch and CUDA versions."""
    return {
        "device": device.type,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "",
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "",
    }


def compile_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def compile_package(endpoint: Endpoint, folder: Path, device: torch.device, half: bool) -> Path:
    """Write ``folder/model.pt2`` and ``folder/compiled.json``; returns the package path."""
    graph = serving_graph(endpoint, half).to(device)
    batch = torch.export.Dim("batch", min=1, max=1024)
    height = torch.export.Dim("height", min=1, max=MAX_SIDE)
    width = torch.export.Dim("width", min=1, max=MAX_SIDE)
    try:
        program = torch.export.export(
            graph,
            (example_input(endpoint).to(device),),
            dynamic_shapes={INPUT_NAME: {0: batch, 1: height, 2: width}},
        )
        path = torch._inductor.aoti_compile_and_package(program, package_path=str(folder / PACKAGE))
    except Exception as exc:  # export and inductor raise many types; keep the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(
            f"{endpoint.name}: compiling the AOTInductor package failed ({first})"
        ) from exc
    info = {**machine_signature(device), "precision": "fp16" if half else "fp32"}
    (folder / INFO).write_text(json.dumps(info, indent=2) + "\n")
    return Path(path)


def load_package(folder: Path, device: torch.device, half: bool) -> tuple[Any, str]:
    """(runner, "") when ``folder`` holds a package built for this machine and precision, else
    (None, why not): the caller falls back to the eager graph and logs the reason."""
    info_path = folder / INFO
    if not (folder / PACKAGE).exists() or not info_path.exists():
        return None, "no compiled package in this version"
    built = json.loads(info_path.read_text())
    here = {**machine_signature(device), "precision": "fp16" if half else "fp32"}
    different = [f"{k} {built.get(k)!r} here {v!r}" for k, v in here.items() if built.get(k) != v]
    if different:
        return None, "compiled package built for another machine: " + "; ".join(different)
    try:
        index = (device.index or 0) if device.type == "cuda" else -1
        return torch._inductor.aoti_load_package(str(folder / PACKAGE), device_index=index), ""
    except Exception as exc:  # a broken or truncated package: serve eager instead
        return None, f"compiled package does not load ({str(exc).strip().splitlines()[0]})"


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


def median_ms(run, batch: np.ndarray, repeats: int = 5) -> float:
    """Median wall time of ``run(batch)`` in ms, after one warm-up call."""
    import time

    run(batch)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(batch)
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


def record_engine_choice(folder: Path, timings_ms: dict[str, float], device: torch.device) -> str:
    """Write ``engine_choice.json``: the timings of each engine on this machine and the fastest,
    which the serving engine uses when the model's ``engine`` parameter is ``auto``."""
    fastest = min(timings_ms, key=timings_ms.get)
    record = {
        "default_engine": fastest,
        "timings_ms": {k: round(v, 3) for k, v in timings_ms.items()},
        **machine_signature(device),
    }
    (folder / CHOICE).write_text(json.dumps(record, indent=2) + "\n")
    return fastest
