"""One writer for every benchmark's results, each with one header: the machine, the versions and
the command line that produced them, so a number in BENCHMARKS.md can be traced and repeated."""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from cycada.atomic import write_json_atomic, write_text_atomic

VERSIONS = (
    "torch",
    "onnxruntime",
    "onnxruntime-gpu",
    "tritonclient",
    "numpy",
    "opencv-python-headless",
)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):  # no /proc: the platform's own name below
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _commit() -> str:
    here = Path(__file__).resolve().parents[1]
    try:
        done = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def bench_header() -> dict[str, Any]:
    """Where and how a benchmark ran (the command line is this process's)."""
    versions = {}
    for name in VERSIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    gpu = ""
    if "torch" in sys.modules:
        # torch: only the machine header of a result needs it
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name()
    return {
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "commit": _commit(),
        "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": _cpu_model(),
            "cpus": len(os.sched_getaffinity(0)),
            "gpu": gpu or "none",
            "python": platform.python_version(),
        },
        "versions": versions,
    }


def header_markdown(header: dict[str, Any]) -> str:
    machine = header["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in header["versions"].items())
    return (
        f"`{header['command']}` at commit {header['commit'] or '(unknown)'}, {header['utc']}; "
        f"{machine['cpus']} CPUs ({machine['cpu']}), GPU: {machine['gpu']}; {versions}\n"
    )


def write_results(
    out: Path | None, name: str, results: dict[str, Any], markdown: str = ""
) -> dict[str, Any]:
    """``OUT/NAME.json`` (the results with a ``header`` key first) and, given ``markdown``,
    ``OUT/NAME.md`` opened by the header line. Returns what the JSON holds; without ``out``
    nothing is written."""
    document = {"header": bench_header(), **results}
    if out is not None:
        write_json_atomic(out / f"{name}.json", document)
        if markdown:
            write_text_atomic(
                out / f"{name}.md", header_markdown(document["header"]) + "\n" + markdown
            )
    return document
