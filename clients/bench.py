"""`cycada bench`: latency and throughput of a served model, and of the same model in process.

Served: a concurrency sweep (closed loop) and, with ``--rate``, fixed request rates (open
loop), each after a warm-up and over a fixed window; client percentiles and throughput beside
the server's own queue and compute times (from Triton's statistics, per request), in the
columns of perf_analyzer's CSV. In process, on the same inputs: every engine installed for that
model (ONNX Runtime per provider, PyTorch eager, torch.compile with ``--compile``, a TensorRT
plan when present). Writes ``bench.json``, ``bench.csv``, ``bench.md`` and ``bench.png``
(throughput against p99 latency).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import tritonclient.grpc as grpcclient

from cycada.atomic import write_text_atomic
from cycada.bench_results import header_markdown, write_results
from cycada.clients.load import LoadResult, infer_waiting, keep_message, run_load
from cycada.clients.triton_client import retryable
from cycada.deps import onnxruntime
from cycada.errors import DataError, ServingError
from cycada.export.tensorrt_build import plan_runner
from cycada.models.endpoints import Endpoint
from cycada.plots import bench_figure
from cycada.serving.engines import FrameDecoder, OnnxEngine, TorchEngine
from cycada.serving.server import ServerOptions, TritonServer
from cycada.training.segmentation.scenes import render_scene

LOGGER = logging.getLogger("cycada.clients")

PERF_ANALYZER_COLUMNS = [
    "Concurrency",
    "Inferences/Second",
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
    "p50 latency",
    "p90 latency",
    "p95 latency",
    "p99 latency",
]


@dataclass
class BenchInput:
    name: str  # images | frames
    array: np.ndarray


def bench_input(model: str, width: int, height: int, batch: int = 1) -> BenchInput:
    """A camera-style synthetic frame (raw, or JPEG for the encoded endpoint)."""

    frame = render_scene(11, width, height, "camera")[0]
    if model.endswith("_encoded"):
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        return BenchInput("frames", data.reshape(1, -1))
    return BenchInput("images", np.ascontiguousarray(np.repeat(frame[None], batch, 0)))


def _server_stats(url: str, model: str, retry_window: float = 60.0) -> dict[str, float]:
    """Cumulative (count, ns) of the model's queue and compute phases; a restarting server is
    waited out for ``retry_window`` seconds."""

    client = grpcclient.InferenceServerClient(url)
    deadline = time.monotonic() + retry_window
    try:
        while True:
            try:
                stats = client.get_inference_statistics(model, as_json=True)
                break
            except Exception as exc:
                why = getattr(exc, "message", lambda: None)() or str(exc)
                if not retryable(exc):  # an unknown model, a refused secret: waiting cannot help
                    raise ServingError(
                        f"{url}: cannot read the statistics of '{model}': {why}"
                    ) from None
                if time.monotonic() > deadline:
                    raise ServingError(
                        f"no Triton server answers at {url} after {retry_window:g} s ({why})"
                    ) from None
                time.sleep(0.5)
    finally:
        client.close()
    totals: dict[str, float] = {}
    for version in stats.get("model_stats", []):
        inference = version.get("inference_stats", {})
        for phase in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
            entry = inference.get(phase, {})
            totals[f"{phase}_count"] = totals.get(f"{phase}_count", 0) + float(
                entry.get("count", 0)
            )
            totals[f"{phase}_ns"] = totals.get(f"{phase}_ns", 0) + float(entry.get("ns", 0))
    return totals


def _server_us(before: dict, after: dict) -> dict[str, float]:
    """Mean µs per request of each phase between two samples. A server restarted in between
    starts its counters again: then the means cover the requests since the restart."""
    if after.get("success_count", 0) < before.get("success_count", 0):
        before = {}
    requests = max(1.0, after.get("success_count", 0) - before.get("success_count", 0))
    return {
        phase: (after.get(f"{phase}_ns", 0) - before.get(f"{phase}_ns", 0)) / requests / 1000
        for phase in ("queue", "compute_input", "compute_infer", "compute_output")
    }


def run_rate(
    url,
    model,
    bench: BenchInput,
    rate: float,
    seconds: float,
    warmup_s: float,
    outputs: tuple[str, ...],
    retry_window: float = 60.0,
    version: str = "",
) -> LoadResult:
    """Open loop: one request every 1/rate s, sent late (never skipped) when the client is
    behind. Latency runs from the *scheduled* send time, so time spent waiting for a free
    sender counts (no coordinated omission); throughput counts the requests that completed
    inside the measurement window, so an overloaded server shows less than the offered rate."""

    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput(bench.name, list(bench.array.shape), "UINT8")
    tensor.set_data_from_numpy(bench.array)
    wanted = [grpcclient.InferRequestedOutput(name) for name in outputs]
    records: list[tuple[float, float, str]] = []  # (scheduled, done, error)
    lock = threading.Lock()
    total = int((warmup_s + seconds) * rate)

    def one(scheduled: float) -> None:
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        error = infer_waiting(client, model, [tensor], wanted, retry_window, version=version)
        with lock:
            records.append((scheduled, time.perf_counter(), error))

    origin = time.perf_counter()
    start, stop = origin + warmup_s, origin + warmup_s + seconds
    with ThreadPoolExecutor(max_workers=64) as pool:
        for k in range(total):
            pool.submit(one, origin + k / rate)
    client.close()
    measured = [r for r in records if r[0] >= start]
    latencies = [(done - scheduled) * 1000 for scheduled, done, error in measured if not error]
    messages: list[str] = []
    for _, _, error in measured:
        if error:
            keep_message(messages, error)
    completed = sum(1 for _, done, error in records if not error and start <= done <= stop)
    batch = bench.array.shape[0] if bench.name == "images" else 1
    return LoadResult(
        0,
        seconds,
        len(latencies),
        completed * batch,
        sum(1 for r in measured if r[2]),
        latencies,
        int(bench.array.nbytes),
        messages,
    )


def served_rows(
    url: str,
    model: str,
    bench: BenchInput,
    concurrency: list[int],
    rates: list[float],
    seconds: float,
    warmup_s: float,
    outputs: tuple[str, ...],
    retry_window: float = 60.0,
    version: str = "",
) -> list[dict]:
    rows = []
    runs = [("concurrency", c) for c in concurrency] + [("rate", r) for r in rates]
    for mode, value in runs:
        before = _server_stats(url, model, retry_window)
        if mode == "concurrency":
            load = run_load(
                url,
                model,
                bench.array,
                int(value),
                seconds,
                warmup_s,
                input_name=bench.name,
                outputs=outputs,
                retry_window=retry_window,
                version=version,
            )
        else:
            load = run_rate(
                url, model, bench, float(value), seconds, warmup_s, outputs, retry_window, version
            )
        server = _server_us(before, _server_stats(url, model, retry_window))
        row = {
            "mode": mode,
            "value": value,
            **load.row(),
            **{f"server_{k}_us": round(v, 1) for k, v in server.items()},
        }
        rows.append(row)
        LOGGER.info(
            f"served {mode}={value}: {row['throughput_per_s']} /s, p50 {row['p50_ms']} ms, "
            f"p99 {row['p99_ms']} ms"
        )
    return rows


def in_process_rows(folder: Path, bench: BenchInput, seconds: float, compile_: bool) -> list[dict]:
    """Every engine installed for the exported model in ``folder``, on the same input."""

    frames = bench.array
    if bench.name == "frames":  # the encoded endpoint runs the decoded frame
        decoder = FrameDecoder()
        frames = decoder.stack([decoder.decode(bench.array[0])])
    engines: list[tuple[str, Callable[[], object]]] = []  # (label, factory)
    if (folder / "model.onnx").exists():
        ort = onnxruntime()

        wanted = ("CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider")
        for provider in ort.get_available_providers():
            if provider in wanted:
                engines.append(
                    (
                        f"onnxruntime {provider}",
                        lambda p=provider: OnnxEngine(folder / "model.onnx", [p]),
                    )
                )
    if (folder / "network.safetensors").exists() and importlib.util.find_spec("torch"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
        half = device == "cuda"
        engines.append((f"pytorch {device}", lambda: TorchEngine(folder, device, half)))
        if compile_:
            engines.append(
                (f"torch.compile {device}", lambda: TorchEngine(folder, device, half, "default"))
            )
    if (folder / "model.plan").exists():
        engines.append(("tensorrt plan", lambda: _PlanEngine(folder)))
    rows = []
    for label, make in engines:
        try:
            engine = make()
        except Exception as exc:  # an engine that cannot start is reported, not fatal
            rows.append(
                {
                    "engine": label,
                    "error": (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200],
                }
            )
            continue
        outputs = ["translated"] if "translated" in _output_names(folder) else ["labels"]
        for _ in range(2):
            engine.run(frames, outputs)
        times = []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds or len(times) < 3:
            began = time.perf_counter()
            result = engine.run(frames, outputs)[0]
            if hasattr(result, "cpu"):
                result.cpu()
            times.append((time.perf_counter() - began) * 1000)
        rows.append(
            {
                "engine": engine.name,
                "batch": int(frames.shape[0]),
                "throughput_per_s": round(1000 * frames.shape[0] / float(np.mean(times)), 2),
                "p50_ms": round(float(np.percentile(times, 50)), 2),
                "p99_ms": round(float(np.percentile(times, 99)), 2),
            }
        )
        LOGGER.info(f"in process {engine.name}: {rows[-1]['throughput_per_s']} /s")
    return rows


def _output_names(folder: Path) -> list[str]:
    info = json.loads((folder / "endpoint.json").read_text())
    return ["translated"] if info["kind"] == "translate" else ["labels"]


class _PlanEngine:
    def __init__(self, folder: Path):

        info = json.loads((folder / "endpoint.json").read_text())
        kind = {"encoded": "segment"}.get(info["kind"], info["kind"])
        endpoint = Endpoint(info["endpoint"], kind, None, info["pad_multiple"], info["in_channels"])
        self.runner = plan_runner(folder / "model.plan", endpoint)
        self.name = "tensorrt plan"

    def run(self, batch, names):
        return self.runner(batch)


def perf_analyzer_csv(rows: list[dict], first_column: str) -> str:
    """perf_analyzer's CSV layout (µs; "Concurrency" or "Request Rate" first), so the tools that
    read its files read these. Client Send and Client Recv are not measured: left empty.
    Network+Server is the mean latency minus the mean server time, as perf_analyzer derives it."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([first_column, *PERF_ANALYZER_COLUMNS[1:]])
    for row in rows:
        server = sum(
            row[f"server_{k}_us"]
            for k in ("queue", "compute_input", "compute_infer", "compute_output")
        )
        mean_us = row["mean_ms"] * 1000
        writer.writerow(
            [
                row["value"],
                row["throughput_per_s"],
                "",
                round(max(0.0, mean_us - server)) if math.isfinite(mean_us) else "",
                round(row["server_queue_us"]),
                round(row["server_compute_input_us"]),
                round(row["server_compute_infer_us"]),
                round(row["server_compute_output_us"]),
                "",
                *(
                    round(row[f"p{q}_ms"] * 1000) if math.isfinite(row[f"p{q}_ms"]) else ""
                    for q in (50, 90, 95, 99)
                ),
            ]
        )
    return buffer.getvalue()


def write_outputs(out: Path, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    header = write_results(out, "bench", result)["header"]
    lines = []
    for mode, first_column, name in (
        ("concurrency", "Concurrency", "bench.csv"),
        ("rate", "Request Rate", "bench_rate.csv"),
    ):
        rows = [row for row in result["served"] if row["mode"] == mode]
        if rows:
            write_text_atomic(out / name, perf_analyzer_csv(rows, first_column))
    lines += [
        f"# bench: {result['model']} {result['size'][0]}x{result['size'][1]} (width x height)",
        "",
        "| served | /s | p50 ms | p90 ms | p95 ms | p99 ms | queue µs | compute µs | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["served"]:
        compute = row["server_compute_infer_us"]
        lines.append(
            f"| {row['mode']} {row['value']} | {row['throughput_per_s']} | {row['p50_ms']} | "
            f"{row['p90_ms']} | {row['p95_ms']} | {row['p99_ms']} | "
            f"{row['server_queue_us']:.0f} | {compute:.0f} | {row['errors']} |"
        )
    failures = sorted({m for row in result["served"] for m in row.get("error_messages", [])})
    if failures:
        lines += ["", "Errors seen:", *(f"- {message}" for message in failures)]
    lines += [
        "",
        "| in process | batch | /s | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in result["in_process"]:
        if "error" in row:
            lines.append(f"| {row['engine']} | | failed: {row['error']} | | |")
        else:
            lines.append(
                f"| {row['engine']} | {row['batch']} | {row['throughput_per_s']} | "
                f"{row['p50_ms']} | {row['p99_ms']} |"
            )
    write_text_atomic(out / "bench.md", "\n".join(lines) + "\n\n" + header_markdown(header))
    width, height = result["size"]
    bench_figure(
        out / "bench.png",
        result["served"],
        result["in_process"],
        f"{result['model']} at {width}x{height}: served (gRPC) and in process",
    )


def run_bench(
    repository: Path,
    model: str,
    url: str | None,
    size: tuple[int, int],
    concurrency: list[int],
    rates: list[float],
    seconds: float,
    warmup_s: float,
    out: Path,
    served: bool = True,
    in_process: bool = True,
    compile_: bool = False,
    retry_window: float = 60.0,
    version: str = "",
) -> dict:
    """The served sweep and the in-process engines at ``size`` (width, height), on ``version``
    of the model (default: the newest ready when served, the newest on disk in process)."""
    model_dir = repository / model
    versions = (
        sorted(int(p.name) for p in model_dir.glob("[0-9]*") if p.is_dir())
        if (model_dir.is_dir())
        else []
    )
    if in_process and not versions:
        raise DataError(
            f"{model_dir} has no exported version to run in process (cycada export first, or "
            "--no-in-process to measure the served model alone)"
        )
    if in_process and version and int(version) not in versions:
        raise DataError(
            f"--model-version {version}: {model_dir} holds version(s) "
            f"{', '.join(map(str, versions))}"
        )
    bench = bench_input(model, *size)
    outputs = ("translated",) if model.startswith("translate") else ("labels",)
    result = {
        "model": model,
        "size": list(size),
        "input": bench.name,
        "request_bytes": int(bench.array.nbytes),
        "served": [],
        "in_process": [],
    }
    if served:
        if url is None:
            options = ServerOptions.on_free_ports(
                repository,
                models=[model],
            )
            with TritonServer(options) as server:
                result["served"] = served_rows(
                    server.grpc_url,
                    model,
                    bench,
                    concurrency,
                    rates,
                    seconds,
                    warmup_s,
                    outputs,
                    version=version,
                )
                result["server_memory_mb"] = server.memory_mb()
        else:
            result["served"] = served_rows(
                url, model, bench, concurrency, rates, seconds, warmup_s, outputs, retry_window,
                version,
            )  # fmt: skip
    if in_process:
        folder = model_dir / (version or str(versions[-1]))
        result["in_process"] = in_process_rows(folder, bench, seconds, compile_)
    write_outputs(out, result)
    return result
