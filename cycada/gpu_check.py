"""Every GPU-only test and benchmark of the project, in one command, results in one folder.

    python -m cycada.gpu_check --out gpu-results      (make gpu-check)

Steps, each with its own time limit (about 11 minutes in all on an H100/H200), in order of what
they show:

* ``served``: DRN-C-26 fp16 at 1024x2048 exported with an AOTInductor package (``--compile``;
  the export times the package and eager, with and without CUDA graphs, and records the
  fastest); every engine in process, then the real tritonserver over gRPC, raw and JPEG frames;
* ``streams``: eight live 2048x1024 segment-video streams at 25 fps each against that
  repository (fps per stream, p99, every frame in order);
* ``segmenters``: DRN-C-26 fp16 at 2048x1024, the bare network against the serving graph in
  eager PyTorch, and ONNX Runtime CUDA on both served graphs (every class, and the blocks of
  ``model.onnx``, which the onnxruntime profile serves);
* ``pytest``: the GPU tests (CUDA training with AMP, the PyTorch-on-CUDA engine against the CPU
  graph, CUDA-graph replay, the compiled package on CUDA, nvJPEG, TensorRT where installed);
* ``stages``: the per-stage images/s and peak memory of DRN-C-26 at the paper's sizes;
* ``digits-paper`` (only with ``--only digits-paper``): U→M and M→U with the paper's digit
  schedule, side by side (``cycada bench digits-paper``).

Heavy files (the repository, the stream videos) go under ``--work``; ``--out`` gets the logs,
the results and ``summary.json`` (the machine, what was installed, each step's exit code and
duration).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cycada.deps import onnxruntime as _onnxruntime

STEPS = [
    (
        "served",
        [
            *(sys.executable, "-m", "cycada.benchmarks.served", "--network", "drn26"),
            *("--size", "2048x1024", "--instances", "2", "--concurrency", "1,4,8,16"),
            *("--seconds", "4", "--compile", "--repository", "{work}/repository"),
            *("--out", "{work}/served"),
        ],
        330,
    ),
    (
        "streams",
        [
            *(sys.executable, "-m", "cycada.benchmarks.streams"),
            *("--repository", "{work}/repository", "--streams", "8", "--fps", "25"),
            *("--size", "2048x1024", "--frames", "250", "--out", "{work}/streams"),
        ],
        100,
    ),
    (
        "segmenters",
        [
            *(sys.executable, "-m", "cycada.benchmarks.segmenters", "--network", "drn26"),
            *("--size", "2048x1024", "--device", "cuda", "--engines", "eager,onnxruntime"),
            *("--repeat", "10", "--out", "{work}/segmenters"),
        ],
        150,
    ),
    ("pytest", [sys.executable, "-m", "pytest", "-q", "-s", "-m", "gpu", "tests/gpu"], 150),
    (
        "stages",
        [
            *(sys.executable, "-m", "cycada.benchmarks.seg_stages", "--network", "drn26"),
            *("--seconds", "5", "--out", "{work}/stages"),
        ],
        120,
    ),
]
# steps run only when named with --only: the paper's digit schedule on U→M and M→U at once,
# each with its equal-iterations control and feature-only row, against Table 2 (96.5 / 95.6);
# minutes on a GPU (USPS and MNIST from --data-root)
OPTIONAL = [
    (
        "digits-paper",
        [
            *(sys.executable, "-m", "cycada.cli", "bench", "digits-paper"),
            *("--data-root", "{data}", "--device", "cuda", "--out", "{work}/digits-paper"),
            *("--time-limit", "570"),  # the rows finished by then are reported
        ],
        590,
    ),
]
RESULTS = ("*.json", "*.md", "*.csv")  # what a step's work folder gives back


def machine() -> dict:
    info: dict = {"python": sys.version.split()[0]}
    try:
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
        onnxruntime = _onnxruntime()

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    return info


def run_step(command: list[str], log_path: Path, limit: float) -> int | str:
    """Run one step in its own process group, so that a step past its limit is stopped with
    everything it started (a tritonserver holding the GPU, load workers)."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            return process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return "timeout"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-results"))
    parser.add_argument("--work", type=Path, help="heavy files (default: a temporary folder)")
    parser.add_argument("--only", action="append", help="run only these steps")
    parser.add_argument("--pytest-args", default="", help="more pytest arguments, e.g. -k name")
    parser.add_argument("--data-root", default=os.environ.get("CYCADA_DATA", "../shared/data"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="cycada-gpu-check-"))
    summary = {"machine": machine(), "steps": {}}
    failed = False
    wanted = args.only or [name for name, _, _ in STEPS]  # optional steps only when named
    for name, command, limit in STEPS + OPTIONAL:
        if name not in wanted:
            continue
        command = [
            part.replace("{work}", str(work)).replace("{data}", args.data_root) for part in command
        ]
        if name == "pytest":
            command += shlex.split(args.pytest_args)
        started = time.perf_counter()
        log_path = args.out / f"{name}.log"
        code = run_step(command, log_path, limit)
        seconds = round(time.perf_counter() - started, 1)
        summary["steps"][name] = {"exit": code, "seconds": seconds}
        for pattern in RESULTS:  # results (not videos or packages) next to the logs
            for found in (work / name).glob(pattern) if (work / name).is_dir() else ():
                if not found.name.startswith("."):  # not the clients' progress files
                    shutil.copy2(found, args.out / found.name)
        failed |= code != 0
        print(f"{name}: exit {code} in {seconds} s", flush=True)
        if code != 0:  # the end of its log, where the reason is
            print("\n".join(log_path.read_text(errors="replace").splitlines()[-25:]), flush=True)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
