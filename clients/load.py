"""Closed-loop load on a Triton model over gRPC: N requests in flight, for a fixed time.

Requests are spread over worker processes (each with a few threads making blocking calls), so
the Python client is not the bottleneck at high throughput. Every worker sends the same
prepared input and asks only for the outputs named. Latencies are per request, client side.

A lost or restarting server (UNAVAILABLE, e.g. ``cycada serve`` restarting a killed
tritonserver) is waited out for ``retry_window`` seconds and the request sent again, as the
user commands do; its latency then includes the wait. Other failures count as errors and the
first few distinct messages are kept.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
from dataclasses import dataclass, field

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
    error_messages: list[str] = field(default_factory=list)  # a few distinct ones

    @property
    def throughput(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def row(self) -> dict:
        return {
            "concurrency": self.concurrency,
            "throughput_per_s": round(self.throughput, 2),
            "mean_ms": round(float(np.mean(self.latencies_ms)), 2)
            if self.latencies_ms
            else float("nan"),
            "p50_ms": round(self.percentile(50), 2),
            "p90_ms": round(self.percentile(90), 2),
            "p95_ms": round(self.percentile(95), 2),
            "p99_ms": round(self.percentile(99), 2),
            "requests": self.requests,
            "errors": self.errors,
            "request_bytes": self.request_bytes,
            "error_messages": self.error_messages,
        }


MAX_ERROR_MESSAGES = 5


def infer_waiting(
    client, model, tensors, wanted, retry_window: float, timeout: float = 60, version: str = ""
) -> str:
    """One request (to ``version``, default the newest ready) with a lost server waited out;
    '' on success, else the error's first line."""
    # tritonclient takes a second to import: only when a server is called
    from cycada.clients.triton_client import retryable

    first_failure, pause = None, 0.1
    while True:
        try:
            client.infer(
                model, tensors, model_version=version, outputs=wanted, client_timeout=timeout
            )
            return ""
        except Exception as exc:
            now = time.monotonic()
            first_failure = now if first_failure is None else first_failure
            if not retryable(exc) or now - first_failure >= retry_window:
                return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            time.sleep(random.uniform(0.5, 1.0) * pause)
            pause = min(2.0, pause * 2)


def keep_message(messages: list[str], message: str) -> None:
    if message not in messages and len(messages) < MAX_ERROR_MESSAGES:
        messages.append(message)


def _worker(
    url, model, input_name, array, outputs, threads, warmup_s, seconds, retry_window, version, queue
) -> None:
    # tritonclient takes a second to import: only when a server is called
    import tritonclient.grpc as grpcclient

    latencies: list[float] = []
    errors = [0]
    messages: list[str] = []
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
            error = infer_waiting(client, model, [tensor], wanted, retry_window, version=version)
            done = time.perf_counter()
            if sent >= start and done <= stop:
                with lock:
                    if not error:
                        latencies.append((done - sent) * 1000)
                    else:
                        errors[0] += 1
                        keep_message(messages, error)

    pool = [threading.Thread(target=loop) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    queue.put((latencies, errors[0], messages))


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
    retry_window: float = 60.0,
    version: str = "",
) -> LoadResult:
    """Keep ``concurrency`` requests in flight for ``seconds`` (after ``warmup_s``), to the
    model's ``version`` (default: the newest ready)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = []
    remaining = concurrency
    while remaining > 0:
        threads = min(threads_per_process, remaining)
        remaining -= threads
        args = (
            url,
            model,
            input_name,
            array,
            outputs,
            threads,
            warmup_s,
            seconds,
            retry_window,
            version,
            queue,
        )
        process = context.Process(target=_worker, args=args, daemon=True)
        process.start()
        processes.append(process)
    latencies: list[float] = []
    errors = 0
    messages: list[str] = []
    for _ in processes:
        got, failed, seen = queue.get(timeout=warmup_s + seconds + retry_window + 120)
        latencies += got
        errors += failed
        for message in seen:
            keep_message(messages, message)
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
        messages,
    )
