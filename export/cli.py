"""`cycada export`: command-line front of :mod:`cycada.export.exporter`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cycada.command_line import Deprecated, add_repository
from cycada.errors import ConfigError
from cycada.export.repository import INSTANCES
from cycada.export.runtime import CONTAINER_PYTHON, parse_pythons
from cycada.sizes import image_size


def _sizes(text: str) -> tuple[tuple[int, int], ...]:
    """``--trt-sizes``: WIDTHxHEIGHT[,...] → the (height, width) shapes TensorRT's profiles take."""
    return tuple((height, width) for width, height in map(image_size, text.split(",")))


def _old_shapes(text: str) -> tuple[tuple[int, int], ...]:
    """``--trt-shapes`` (deprecated): HEIGHTxWIDTH[,...], the one size written height first."""
    return tuple((width, height) for width, height in map(image_size, text.split(",")))


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "export",
        help="export a training run to ONNX/TensorRT and a Triton model repository",
        description="Export the generators and the adapted task model of RUN_DIR as a new "
        "version of each model in the repository, with parity checks on real images.",
        epilog="example:\n  cycada export runs/demo --repository model_repository --check",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the --out of a training run")
    add_repository(parser)
    parser.add_argument("--check", action="store_true", help="print the parity table")
    parser.add_argument(
        "--stage",
        choices=("source", "target", "feature", "joint"),
        help="export this stage's task model (default: the stage the run's verdict ships, "
        "metrics.json 'verdict')",
    )
    parser.add_argument("--no-fp16", action="store_true", help="skip the FP16 ONNX variant")
    parser.add_argument("--simplify", action="store_true", help="extra ONNX optimizer pass")
    _add_engine_arguments(parser)
    _add_repository_arguments(parser)
    parser.set_defaults(handler=run)


def _add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """What the export builds beside the ONNX graphs: packages, plans."""
    parser.add_argument(
        "--weights-only",
        action="store_true",
        help="no ONNX: weights for the PyTorch engine of the Python backend (GPU serving)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also an AOTInductor package (model.pt2) per model, compiled now for this "
        "machine's GPU (or CPU); the PyTorch engine loads it in seconds, or falls back to eager",
    )
    parser.add_argument("--compile-device", default="auto", help="auto (default), cuda or cpu")
    parser.add_argument(
        "--compile-size",
        type=image_size,
        metavar="WIDTHxHEIGHT",
        help="the frame size the package is tuned for (Inductor picks kernels for its example; "
        "default: a small frame); any size still runs",
    )
    parser.add_argument(
        "--compile-autotune",
        action="store_true",
        help="Inductor's max_autotune for the package (benchmarks kernel choices; slower export)",
    )
    parser.add_argument("--tensorrt", action="store_true", help="also build TensorRT FP16 plans")
    parser.add_argument(
        "--int8-calibration", type=Path, metavar="DIR", help="INT8 plans calibrated on DIR's images"
    )
    parser.add_argument(
        "--trt-sizes",
        type=_sizes,
        dest="trt_shapes",
        default=((256, 512), (512, 1024), (1024, 2048)),
        metavar="WIDTHxHEIGHT,...",
        help="frame sizes the TensorRT profiles cover, smallest to largest (default "
        "512x256,1024x512,2048x1024)",
    )
    parser.add_argument(
        "--trt-shapes",
        type=_old_shapes,
        action=Deprecated,
        new="--trt-sizes WIDTHxHEIGHT,... (--trt-shapes was HEIGHTxWIDTH)",
        dest="trt_shapes",
    )
    parser.add_argument("--trt-max-batch", type=int, default=8)


def _add_repository_arguments(parser: argparse.ArgumentParser) -> None:
    """How the versions land in the repository, what they carry and what checks them."""
    parser.add_argument("--keep", type=int, default=3, help="versions kept on disk per model")
    parser.add_argument(
        "--instances",
        type=int,
        default=INSTANCES,
        help=f"Triton instances per model (default {INSTANCES}; 1 halves the server's memory "
        "but stalls back-to-back requests 500 ms on Triton 2.51's batcher)",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="trace every graph again, even when the same weights were exported before "
        "(graphs are cached under $CYCADA_CACHE_DIR/onnx, default ~/.cache/cycada)",
    )
    parser.add_argument(
        "--runtime-python",
        type=parse_pythons,
        metavar="X.Y,...",
        help="Python versions of the Triton backend stubs the models carry their packages for "
        f"(default: {CONTAINER_PYTHON}, NVIDIA's 24.10 container's, and this machine's)",
    )
    parser.add_argument("--data-root", type=Path, help="real images for parity (../shared/data)")
    parser.add_argument(
        "--no-cpu-engines",
        action="store_true",
        help="on a host without CUDA, skip OpenVINO's conversion and the timing that picks the "
        "fastest CPU engine (ONNX Runtime then serves; also CYCADA_EXPORT_CPU_ENGINES=0)",
    )


def run(args: argparse.Namespace) -> int:
    # imported when the command runs: the command line starts without it
    from cycada.export.exporter import ExportOptions, export_run

    if args.weights_only and args.compile:
        raise ConfigError("--weights-only cannot be combined with --compile (parity needs ONNX)")
    if args.weights_only and (args.tensorrt or args.int8_calibration):
        raise ConfigError("--weights-only cannot be combined with --tensorrt (plans need ONNX)")
    if args.instances < 1:
        raise ConfigError(f"--instances {args.instances}: expected 1 or more")
    if args.int8_calibration and not args.int8_calibration.is_dir():
        raise ConfigError(f"--int8-calibration {args.int8_calibration} is not a folder of images")
    options = ExportOptions(
        fp16=not args.no_fp16,
        onnx=not args.weights_only,
        simplify=args.simplify,
        tensorrt=args.tensorrt or args.int8_calibration is not None,
        int8_calibration=args.int8_calibration,
        trt_max_batch=args.trt_max_batch,
        trt_shapes=args.trt_shapes,
        keep=args.keep,
        data_root=args.data_root,
        compile=args.compile,
        compile_device=args.compile_device,
        compile_size=args.compile_size,
        compile_autotune=args.compile_autotune,
        cache=not args.no_cache,
        instances=args.instances,
        runtime_pythons=args.runtime_python,
        stage=args.stage,
    )
    if args.no_cpu_engines:
        options.cpu_engines = False
    report = export_run(
        args.run_dir, args.repository, options, log=logging.getLogger("cycada.export").info
    )
    if args.check:
        print(report.table())
    for name, path in report.versions.items():
        print(f"{name}: version {path.name} at {path}")
    print(f"exported in {report.seconds:.0f} s; serve it with: cycada serve {args.repository}")
    return 0
