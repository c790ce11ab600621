"""Every GPU-only test and benchmark of the project, in one command, results in one folder.

    python -m cycada.gpu_check --out gpu-results      (make gpu-check)

Steps (each with its own time limit, about 6 minutes in all on an H100/H200): the GPU tests
(CUDA training with AMP, the PyTorch-on-CUDA serving engine, TensorRT plans where TensorRT is
installed), the per-stage images/s and peak memory of DRN-C-26 at the paper's sizes, and served
(Triton, gRPC) vs in-process DRN-C-26 fp16 at 1024x2048. ``summary.json`` records the machine,
what was installed, and each step's exit code and duration.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

STEPS = [
    ("pytest", [sys.executable, "-m", "pytest", "-q", "-s", "-m", "gpu", "tests/gpu"], 150),
    (
        "stages",
        [
            sys.executable,
            "-m",
            "cycada.benchmarks.seg_stages",
            "--model",
            "drn26",
            "--seconds",
            "5",
            "--out",
            "{out}",
        ],
        120,
    ),
    (
        "served",
        [
            sys.executable,
            "-m",
            "cycada.benchmarks.served",
            "--model",
            "drn26",
            "--size",
            "2048x1024",
            "--instances",
            "2",
            "--concurrency",
            "1,4,8,16",
            "--seconds",
            "5",
            "--weights-only",
            "--out",
            "{out}",
        ],
        220,
    ),
]


def machine() -> dict:
    info: dict = {"python": sys.version.split()[0]}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
            info["gpu_memory_gib"] = round(
                torch.cuda.get_device_properties(0).total_memory / 2**30, 1
            )
    except ImportError:
        info["torch"] = None
    for name in ("tensorrt", "onnxruntime", "torchvision", "tritonclient"):
        info[name] = importlib.util.find_spec(name) is not None
    if info["onnxruntime"]:
        from cycada.deps import onnxruntime as _onnxruntime

        onnxruntime = _onnxruntime()

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-results"))
    parser.add_argument("--only", action="append", help="run only these steps")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"machine": machine(), "steps": {}}
    failed = False
    for name, command, limit in STEPS:
        if args.only and name not in args.only:
            continue
        command = [part.replace("{out}", str(args.out)) for part in command]
        started = time.perf_counter()
        with open(args.out / f"{name}.log", "w") as log:
            try:
                code = subprocess.run(
                    command, stdout=log, stderr=subprocess.STDOUT, timeout=limit
                ).returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
        seconds = round(time.perf_counter() - started, 1)
        summary["steps"][name] = {"exit": code, "seconds": seconds}
        failed |= code != 0
        print(f"{name}: exit {code} in {seconds} s", flush=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
