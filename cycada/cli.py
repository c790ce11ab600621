"""The ``cycada`` command: one entry point, one subcommand per user task."""

from __future__ import annotations

import argparse
import sys

from cycada import __version__, doctor
from cycada.benchmarks import BENCHMARKS, bench_main
from cycada.clients import cli as clients_cli
from cycada.command_line import help_text as command_help
from cycada.errors import CycadaError
from cycada.export import cli as export_cli
from cycada.log import configure_command_logging
from cycada.serving import cli as serve_cli
from cycada.training.digits import cli as digits_cli
from cycada.training.segmentation import cli as seg_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cycada",
        description="CyCADA domain adaptation: train, evaluate, export and serve.",
        epilog="example:\n  cycada train digits --source usps --target mnist --preset quick "
        "--target-split test --out runs/u2m",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cycada {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def group(name: str, help_text: str, example: str) -> argparse._SubParsersAction:
        sub = commands.add_parser(name, help=help_text, **command_help(help_text, example))
        return sub.add_subparsers(dest="task", metavar="TASK", required=True)

    train = group(
        "train",
        "train CyCADA (all stages, or one with --stage)",
        "cycada train digits --source usps --target mnist --preset quick --out runs/u2m",
    )
    ablate = group(
        "ablate",
        "run the ablation rows of a paper table",
        "cycada ablate digits --source usps --target mnist --preset quick --out runs/abl",
    )
    evaluate = group(
        "eval",
        "evaluate a checkpoint",
        "cycada eval digits runs/u2m/checkpoints/feature.safetensors --dataset mnist",
    )
    data = group(
        "data",
        "generate synthetic data sets and clips",
        "cycada data scenes --out data/synth --count 200 --style game --layout gta5",
    )
    digits_cli.register(train, ablate, evaluate)
    seg_cli.register(train, ablate, evaluate, data)
    export_cli.register(commands)
    serve_cli.register(commands)
    clients_cli.register(commands)
    doctor.register(commands)
    return parser


def one_line(exc: BaseException) -> str:
    """The error's own line. A data loader worker re-raises it with the worker's traceback in
    the message ("Caught DataError in DataLoader worker process 1. Original Traceback ..."):
    the last line holds the original ``module.Class: message``."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        name, _, message = last.partition(": ")
        return message if message and "." in name else last
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    configure_command_logging()
    benchmark = None
    if len(argv) >= 2 and argv[0] == "bench":
        if argv[1] == "sweep":
            argv = ["bench", *argv[2:]]
        elif argv[1] in BENCHMARKS:
            benchmark = argv[1]
    parser = build_parser()
    try:
        if benchmark is not None:
            return bench_main(benchmark, argv[2:])
        args = parser.parse_args(argv)  # inside: an option's type may raise a cycada error
        return int(args.handler(args) or 0)
    except CycadaError as exc:  # 2: the input is wrong; 1: something failed (cycada.errors)
        print(f"cycada: error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            "cycada: interrupted; finished work is kept (training and translate-dir resume "
            "when the same command runs again)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
