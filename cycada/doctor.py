"""`cycada doctor`: what this machine has (CUDA, ONNX Runtime providers, TensorRT, tritonserver,
package versions) and which engine each served model would use here."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
from pathlib import Path

from cycada.command_line import add_json, add_repository, print_json
from cycada.errors import DataError

PACKAGES = (
    "torch",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorrt",
    "tritonclient",
    "grpcio",
    "numpy",
    "opencv-python-headless",
    "opencv-python",
)


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_report() -> list[tuple[str, str]]:
    """(what, finding) lines about this machine."""
    # imported when doctor runs: the command line starts without it
    import torch

    lines = [
        ("python", platform.python_version()),
        ("platform", f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"),
    ]
    for name in PACKAGES:
        version = _version(name)
        if version:
            lines.append((name, version))
    if _version("onnxruntime") and _version("onnxruntime-gpu"):
        lines.append(
            (
                "warning",
                "onnxruntime and onnxruntime-gpu are both installed and install the same module; "
                "keep one (pip uninstall onnxruntime; see README, 'GPU hosts')",
            )
        )
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        lines.append(("cuda", f"CUDA {torch.version.cuda}: {', '.join(names)}"))
    else:
        lines.append(("cuda", "no CUDA GPU visible (torch build: " + torch.__version__ + ")"))
    compiler = shutil.which("cc") or shutil.which("gcc")
    lines.append(
        (
            "torch.compile",
            f"C compiler {compiler}" if compiler else "no C compiler: torch.compile cannot build",
        )
    )
    providers = _onnxruntime_providers()
    lines.append(("onnxruntime providers", ", ".join(providers) or "onnxruntime not installed"))
    openvino = importlib.util.find_spec("openvino") is not None
    lines.append(
        (
            "openvino",
            "importable (exports on a CPU time it beside ONNX Runtime)"
            if openvino
            else "not installed (pip install 'cycada[cpu]': the CPU engine exports may choose)",
        )
    )
    trt = importlib.util.find_spec("tensorrt") is not None
    lines.append(
        ("tensorrt", "importable" if trt else "not installed (the tensorrt profile needs it)")
    )
    # imported when doctor runs: the command line starts without it
    from cycada.serving.server_install import find_tritonserver

    home = find_tritonserver()
    lines.append(
        ("tritonserver", str(home.binary) if home else "not found (make setup installs it)")
    )
    return lines


def _onnxruntime_providers() -> list[str]:
    if importlib.util.find_spec("onnxruntime") is None:
        return []
    # imported when doctor runs: the command line starts without it
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def _parameters(config: str) -> dict[str, str]:

    return dict(re.findall(r'key: "(\w+)" value: \{ string_value: "([^"]*)" \}', config))


def repository_report(repository: Path) -> list[tuple[str, str]]:
    """Per model: its profile (backend), latest version and the engine it would run on here."""
    # imported when doctor runs: the command line starts without it
    import torch

    from cycada.serving.engines import engine_choice, recorded_choice

    lines = []
    providers, cuda = _onnxruntime_providers(), torch.cuda.is_available()
    for config_path in sorted(repository.glob("*/config.pbtxt")):
        model = config_path.parent
        text = config_path.read_text()
        backend = "python"
        if 'platform: "tensorrt_plan"' in text:
            backend = "tensorrt"
        elif 'backend: "onnxruntime"' in text:
            backend = "onnxruntime"
        versions = sorted(int(p.name) for p in model.iterdir() if p.is_dir() and p.name.isdigit())
        where = f"version {versions[-1]}" if versions else "no version exported"
        if not versions:
            what = f"{backend} profile"
        elif backend == "python":
            parameters = _parameters(text)
            if parameters.get("handler") == "EncodedFrameModel":
                what = f"decodes frames, then runs '{parameters.get('segment_model', 'segment')}'"
            else:
                folder = model / str(versions[-1])
                choice = parameters.get("engine", os.environ.get("CYCADA_SERVE_ENGINE", "auto"))
                measured = recorded_choice(folder) if choice == "auto" else None
                if measured:  # what select_engine runs: the export's measured choice
                    choice = measured.get("default_engine", "auto")
                engine, how = engine_choice(
                    "pytorch" if choice == "eager" else choice,
                    (folder / "model.onnx").exists(),
                    providers,
                    cuda,
                )
                what = f"Python backend, {engine} on {how}"
                if measured:
                    graphs = " + CUDA graphs" if measured.get("cuda_graphs") else ""
                    what += f" (fastest at export: {choice}{graphs})"
        elif backend == "onnxruntime":
            what = "Triton's onnxruntime backend (GPU instance; TensorRT accelerator)"
        else:
            what = "Triton's TensorRT backend (plans must match this GPU and TensorRT)"
        lines.append((model.name, f"{where}; {what}"))
    return lines


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "doctor",
        help="what this machine has, and which engine each model would use here",
        description="CUDA, ONNX Runtime providers, TensorRT, tritonserver and package versions; "
        "with a model repository, the engine each model would run on here.",
        epilog="example:\n  cycada doctor --repository model_repository --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_repository(parser, default=None, help="a model repository", positional_alias=True)
    add_json(parser, "the report")
    parser.set_defaults(handler=run_doctor)


def run_doctor(args: argparse.Namespace) -> int:

    lines = machine_report()
    if args.repository is not None:
        if not args.repository.is_dir():
            raise DataError(f"{args.repository} is not a folder (expected a model repository)")
        models = repository_report(args.repository)
        if not models:
            raise DataError(f"{args.repository} has no */config.pbtxt (not a model repository)")
        lines += [("", ""), *((f"model {name}", text) for name, text in models)]
    if args.json:
        machine = dict(line for line in lines if line[0] and not line[0].startswith("model "))
        models = {name[len("model ") :]: text for name, text in lines if name.startswith("model ")}
        print_json({"machine": machine, "models": models})
        return 0
    width = max(len(name) for name, _ in lines)
    for name, text in lines:
        print(f"{name:<{width}}  {text}" if name else "")
    return 0
