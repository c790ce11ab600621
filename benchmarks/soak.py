"""Soak: saturating closed-loop load for a long time, sampled every second.

    cycada bench soak --repository runs/demo/model_repository --minutes 10 --out DIR

Starts the embedded tritonserver on the repository (loopback, free ports) unless ``--url`` is
given, keeps ``--concurrency`` requests in flight on ``--model`` until ``--minutes`` or
``--max-requests`` is reached, and samples every second: requests, errors, and the resident
memory of the server with its backend stubs (its process group). Per window (a minute by
default): requests/s, errors, p50/p99 latency. The goals, over the run after ``--warmup``:
no errors, p99 of the last window within 20 % of the first, server memory grown by less than
5 %. Writes ``soak.json`` and ``soak.md``; exits 1 when a goal is missed.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from cycada.command_line import add_repository, add_urls, at_least_one, command_parser, seconds
from cycada.serving.server import ServerOptions, TritonServer
from cycada.sizes import image_size

P99_DRIFT_GOAL = 0.20
RSS_GROWTH_GOAL = 0.05


@dataclass
class Samples:
    """What the request threads record (under one lock) and the sampler reads each second."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    done: list[tuple[float, float]] = field(default_factory=list)  # (finish time, latency ms)
    errors: list[tuple[float, str]] = field(default_factory=list)  # (time, message)
    sent: int = 0


def _client_loop(url, model, array, stop: threading.Event, samples: Samples, budget) -> None:

    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput("images", list(array.shape), "UINT8")
    tensor.set_data_from_numpy(array)
    wanted = [grpcclient.InferRequestedOutput("labels")]
    while not stop.is_set():
        with samples.lock:
            if budget and samples.sent >= budget:
                return
            samples.sent += 1
        started = time.perf_counter()
        try:
            client.infer(model, [tensor], outputs=wanted, client_timeout=60)
        except Exception as exc:  # every error is kept with its message
            with samples.lock:
                samples.errors.append((time.monotonic(), str(exc).splitlines()[0][:200]))
            continue
        latency = (time.perf_counter() - started) * 1000
        with samples.lock:
            samples.done.append((time.monotonic(), latency))


def soak(
    urls: list[str],
    model: str,
    size: tuple[int, int],
    concurrency: int,
    seconds: float,
    warmup: float,
    window: float,
    max_requests: int = 0,
    memory_mb=lambda: 0.0,
) -> dict[str, Any]:
    """Run the load; returns per-second samples, per-window summaries and the goals."""
    array = np.random.default_rng(0).integers(0, 256, (1, *size, 3), np.uint8)
    samples, stop = Samples(), threading.Event()
    threads = [
        threading.Thread(
            target=_client_loop,
            args=(urls[i % len(urls)], model, array, stop, samples, max_requests),
        )
        for i in range(concurrency)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    per_second = []
    previous_done = previous_errors = 0
    while time.monotonic() - started < seconds and any(t.is_alive() for t in threads):
        time.sleep(1.0)
        with samples.lock:
            done, errors = len(samples.done), len(samples.errors)
        per_second.append(
            {
                "t": round(time.monotonic() - started, 1),
                "requests": done - previous_done,
                "errors": errors - previous_errors,
                "server_rss_mb": memory_mb(),
            }
        )
        previous_done, previous_errors = done, errors
    stop.set()
    for thread in threads:
        thread.join()
    return summarise(samples, per_second, started, warmup, window)


def summarise(samples: Samples, per_second, started, warmup, window) -> dict[str, Any]:
    windows = []
    end = max((t for t, _ in samples.done), default=started) - started
    position = warmup
    while position < end:
        stop = min(position + window, end)
        latencies = [lat for t, lat in samples.done if position <= t - started < stop]
        errors = sum(position <= t - started < stop for t, _ in samples.errors)
        if latencies:
            windows.append(
                {
                    "from_s": round(position, 1),
                    "to_s": round(stop, 1),
                    "requests_per_s": round(len(latencies) / (stop - position), 2),
                    "errors": errors,
                    "p50_ms": round(float(np.percentile(latencies, 50)), 2),
                    "p99_ms": round(float(np.percentile(latencies, 99)), 2),
                }
            )
        position = stop
    # the last window may be a short tail: compare whole windows when there are two
    whole = [w for w in windows if w["to_s"] - w["from_s"] >= 0.9 * window] or windows
    drift = whole[-1]["p99_ms"] / whole[0]["p99_ms"] - 1 if len(whole) >= 2 else 0.0
    rss = [s["server_rss_mb"] for s in per_second if s["t"] >= warmup and s["server_rss_mb"]]
    growth = (rss[-1] / rss[0] - 1) if len(rss) >= 2 else 0.0
    errors_after_warmup = sum(t - started >= warmup for t, _ in samples.errors)
    messages = sorted({m for _, m in samples.errors})[:5]
    goals = {
        "no_errors": errors_after_warmup == 0,
        "p99_drift_under_20_percent": abs(drift) < P99_DRIFT_GOAL,
        "rss_growth_under_5_percent": growth < RSS_GROWTH_GOAL,
    }
    return {
        "requests": len(samples.done),
        "errors": len(samples.errors),
        "errors_after_warmup": errors_after_warmup,
        "error_messages": messages,
        "p99_drift": round(drift, 4),
        "rss_growth": round(growth, 4),
        "rss_after_warmup_mb": rss[0] if rss else None,
        "rss_end_mb": rss[-1] if rss else None,
        "goals": goals,
        "windows": windows,
        "per_second": per_second,
    }


def markdown(result: dict[str, Any], header: str) -> str:
    lines = [
        header,
        "",
        f"{result['requests']} requests, {result['errors']} errors "
        f"({result['errors_after_warmup']} after warm-up); p99 drift first→last window "
        f"{100 * result['p99_drift']:+.1f} %; server RSS {result['rss_after_warmup_mb']} → "
        f"{result['rss_end_mb']} MB ({100 * result['rss_growth']:+.1f} %).",
        "",
        "| window (s) | requests/s | errors | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for w in result["windows"]:
        lines.append(
            f"| {w['from_s']:.0f}-{w['to_s']:.0f} | {w['requests_per_s']} | {w['errors']} | "
            f"{w['p50_ms']} | {w['p99_ms']} |"
        )
    lines += [
        "",
        "Goals: "
        + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in result["goals"].items()),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        "bench soak",
        __doc__.split("\n\n")[0],
        "cycada bench soak --repository model_repository --minutes 10 --out runs/soak",
    )
    add_repository(parser, default=None, help="start a server on this repository")
    add_urls(parser, default=[], help="running server(s) instead (RSS is then not sampled)")
    parser.add_argument("--model", default="segment")
    parser.add_argument(
        "--size", type=image_size, default=(256, 128), help="WIDTHxHEIGHT of the request images"
    )
    parser.add_argument("--concurrency", type=at_least_one, default=8)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--max-requests", type=int, default=0, help="stop after this many")
    parser.add_argument(
        "--warmup",
        type=seconds(zero_allowed=True),
        default=90.0,
        help="seconds left out of the goals (ONNX Runtime grows its arenas in the first minute)",
    )
    parser.add_argument("--window", type=float, default=60.0, help="seconds per summary row")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if not (args.repository or args.url):
        parser.error("give --repository (a server is started) or --url")
    width, height = args.size
    server = None
    if not args.url:
        options = ServerOptions.on_free_ports(
            args.repository,
            models=[args.model],
            log_file=args.out / "tritonserver.log",
        )
        server = TritonServer(options).start()
    try:
        result = soak(
            [server.grpc_url] if server else args.url,
            args.model,
            (height, width),
            args.concurrency,
            args.minutes * 60,
            args.warmup,
            args.window,
            args.max_requests,
            server.memory_mb if server else (lambda: 0.0),
        )
    finally:
        if server is not None:
            server.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    header = (
        f"Soak: {args.model} {height}x{width}, concurrency {args.concurrency}, "
        f"{args.minutes:g} min (warm-up {args.warmup:g} s, windows of {args.window:g} s)"
    )
    text = markdown(result, header)
    (args.out / "soak.md").write_text(text)
    print(text)
    return 0 if all(result["goals"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
