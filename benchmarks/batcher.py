"""Triton's dynamic-batcher settings side by side: the exported config against variants.

    cycada bench batcher --repository runs/demo/model_repository --out runs/batcher

Copies one model of a repository once per variant (instance count and batching delay),
serves each copy from its own tritonserver on loopback, and measures every variant at each
concurrency in turn (interleaved, so machine noise falls on all of them alike): throughput,
p50 / p99 / max latency and the number of requests slower than ``--stall-ms``.

Why it exists: with one instance, Triton 2.51's batcher wakes only when a request arrives
while an instance is free, so a request landing between a response and its instance's
release waits out the batcher's fixed 500 ms idle timeout (``export/repository.py``,
``INSTANCES``). The stall column shows it; the default variants are the exported config and
the two it replaced.
"""

from __future__ import annotations

import re
import tempfile
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from cycada.bench_results import write_results
from cycada.clients.load import run_load
from cycada.command_line import add_repository, command_parser, seconds
from cycada.errors import ConfigError
from cycada.export.repository import copy_version
from cycada.serving.server import ServerOptions, TritonServer
from cycada.sizes import image_size

# name: (instances, max_queue_delay_microseconds); None keeps the exported value
DEFAULT_VARIANTS = "exported=-:-,one-instance-2ms=1:2000,one-instance-0ms=1:0"


def parse_variants(text: str) -> dict[str, tuple[int | None, int | None]]:
    """``NAME=INSTANCES:DELAY_US`` items, ``-`` for the exported value."""
    variants: dict[str, tuple[int | None, int | None]] = {}
    for item in text.split(","):
        name, _, values = item.partition("=")
        instances, _, delay = values.partition(":")
        try:
            variants[name] = (
                None if instances == "-" else int(instances),
                None if delay == "-" else int(delay),
            )
        except ValueError:
            raise ConfigError(
                f"--variants: '{item}' is not NAME=INSTANCES:DELAY_US (integers or -)"
            ) from None
        if not name or (variants[name][0] is not None and variants[name][0] < 1):
            raise ConfigError(f"--variants: '{item}' needs a name and at least 1 instance")
    return variants


def variant_config(text: str, instances: int | None, delay_us: int | None) -> str:
    """A config.pbtxt's text with its instance count and batching delay replaced."""
    if instances is not None:
        text = re.sub(r"count: \d+", f"count: {instances}", text)
    if delay_us is not None:
        text = re.sub(
            r"max_queue_delay_microseconds: \d+", f"max_queue_delay_microseconds: {delay_us}", text
        )
    return text


def variant_repository(source: Path, model: str, scratch: Path, instances, delay_us) -> Path:
    """A repository holding only ``model`` (its newest version), with the variant's config."""
    versions = sorted(
        (p for p in (source / model).iterdir() if p.is_dir() and p.name.isdigit()),
        key=lambda p: int(p.name),
    )
    if not versions:
        raise ConfigError(f"--repository: {source / model} has no numbered version folder")
    target = scratch / model
    copy_version(versions[-1], target)
    config = (source / model / "config.pbtxt").read_text()
    (target / "config.pbtxt").write_text(variant_config(config, instances, delay_us))
    return scratch


def _row(name: str, load, stall_ms: float) -> dict:
    return {
        "variant": name,
        **load.row(),
        "max_ms": round(load.percentile(100), 2),
        "stalls": sum(latency > stall_ms for latency in load.latencies_ms),
    }


def table(rows: list[dict], stall_ms: float) -> str:
    lines = [
        "| concurrency | variant | /s | p50 ms | p99 ms | max ms | "
        f"over {stall_ms:.0f} ms | errors |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['concurrency']} | {row['variant']} | {row['throughput_per_s']} | "
            f"{row['p50_ms']} | {row['p99_ms']} | {row['max_ms']} | {row['stalls']} | "
            f"{row['errors']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        "bench batcher",
        __doc__.splitlines()[0],
        "cycada bench batcher --repository runs/demo/model_repository --variants one=1:0,two=2:0",
    )
    add_repository(parser, required=True, default=None, help="exported repository")
    parser.add_argument("--model", default="segment")
    parser.add_argument("--size", type=image_size, default=(256, 128), help="WIDTHxHEIGHT")
    parser.add_argument("--concurrency", default="1,2,4")
    parser.add_argument("--seconds", type=seconds(), default=8.0)
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="NAME=INSTANCES:DELAY_US,…")
    parser.add_argument("--stall-ms", type=float, default=400.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    variants = parse_variants(args.variants)
    if not (args.repository / args.model / "config.pbtxt").is_file():
        raise ConfigError(f"--repository: {args.repository / args.model}/config.pbtxt not found")
    concurrencies = [int(c) for c in args.concurrency.split(",")]

    width, height = args.size
    frame = np.random.default_rng(0).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="cycada-batcher-") as scratch, ExitStack() as stack:
        servers = {}
        for name, (instances, delay_us) in variants.items():
            folder = Path(scratch) / name
            repository = variant_repository(
                args.repository, args.model, folder, instances, delay_us
            )
            server = stack.enter_context(TritonServer(ServerOptions.on_free_ports(repository)))
            run_load(server.grpc_url, args.model, frame, 2, 1.0, 0.0)  # warm every instance
            servers[name] = server
        for concurrency in concurrencies:
            for name, server in servers.items():
                load = run_load(server.grpc_url, args.model, frame, concurrency, args.seconds, 1.0)
                rows.append(_row(name, load, args.stall_ms))
                print(table(rows[-1:], args.stall_ms).splitlines()[-1], flush=True)
    markdown = (
        f"# Batcher settings, model '{args.model}' at {width}x{height}, {args.seconds:g} s "
        f"each\n\n{table(rows, args.stall_ms)}"
    )
    write_results(args.out, "batcher", {"variants": variants, "rows": rows}, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
