"""Closed-loop load on a Triton model over gRPC: N requests in flight, for a fixed time.

Requests are spread over worker processes (each with a few threads making blocking calls), so
the Python client is not the bottleneck at high throughput. Every worker sends the same
prepared input and asks only for the outputs named. Latencies are per request, client side.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    requests: int
    items: int  # images (a request may carry a batch)
    errors: int
    latencies_ms: list[float]
    request_bytes: int

    @property
    def throughput(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def row(self) -> dict:
        return {
            "concurrency": self.concurrency,
            "throughput_per_s": round(self.throughput, 2),
            "p50_ms": round(self.percentile(50), 2),
            "p90_ms": round(self.percentile(90), 2),
            "p95_ms": round(self.percentile(95), 2),
            "p99_ms": round(self.percentile(99), 2),
            "requests": self.requests,
            "errors": self.errors,
            "request_bytes": self.request_bytes,
        }


def _worker(url, model, input_name, array, outputs, threads, warmup_s, seconds, queue) -> None:
    import tritonclient.grpc as grpcclient

    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = time.perf_counter() + warmup_s
    stop = start + seconds

    def loop():
        client = grpcclient.InferenceServerClient(url)
        tensor = grpcclient.InferInput(input_name, list(array.shape), "UINT8")
        tensor.set_data_from_numpy(array)
        wanted = [grpcclient.InferRequestedOutput(name) for name in outputs]
        while True:
            sent = time.perf_counter()
            if sent >= stop:
                return
            try:
                client.infer(model, [tensor], outputs=wanted, client_timeout=60)
                ok = True
            except Exception:
                ok = False
            done = time.perf_counter()
            if sent >= start and done <= stop:
                with lock:
                    if ok:
                        latencies.append((done - sent) * 1000)
                    else:
                        errors[0] += 1

    pool = [threading.Thread(target=loop) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    queue.put((latencies, errors[0]))


def run_load(
    url: str,
    model: str,
    array: np.ndarray,
    concurrency: int,
    seconds: float = 5.0,
    warmup_s: float = 2.0,
    input_name: str = "images",
    outputs: tuple[str, ...] = ("labels",),
    threads_per_process: int = 4,
) -> LoadResult:
    """Keep ``concurrency`` requests in flight for ``seconds`` (after ``warmup_s``)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = []
    remaining = concurrency
    while remaining > 0:
        threads = min(threads_per_process, remaining)
        remaining -= threads
        args = (url, model, input_name, array, outputs, threads, warmup_s, seconds, queue)
        process = context.Process(target=_worker, args=args, daemon=True)
        process.start()
        processes.append(process)
    latencies: list[float] = []
    errors = 0
    for _ in processes:
        got, failed = queue.get(timeout=warmup_s + seconds + 120)
        latencies += got
        errors += failed
    for process in processes:
        process.join(timeout=30)
    batch = array.shape[0]
    return LoadResult(
        concurrency,
        seconds,
        len(latencies),
        len(latencies) * batch,
        errors,
        latencies,
        int(array.nbytes),
    )
