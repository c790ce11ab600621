"""The paper's digit schedule on both USPS/MNIST shifts at once, against the paper's Table 2.

    cycada bench digits-paper --device cuda --out runs/digits-paper [--seeds 0-2]

Runs ``cycada ablate digits --preset paper`` for U→M and M→U side by side (two processes: the
networks are small, so a GPU is launch-bound and holds both at once), each with the
equal-iterations source-only control, feature-only and the full method, and writes one table
with each shift's wall time, the card, and the paper's figures (Table 2: source only 69.6 /
82.2, ADDA 90.1 / 89.4, CyCADA 96.5 / 95.6 for U→M / M→U).

Offline protocol, as in BENCHMARKS.md: the MNIST training images are not available, so U→M
adapts to MNIST t10k's images and is measured on their labels, and M→U trains on MNIST t10k
(10k labelled images where the paper has 60k) and is measured on USPS test. ``--set`` passes
overrides to both (a smoke run on a CPU: ``--set data.max_samples=256`` and short schedules).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from cycada.bench_results import write_results
from cycada.command_line import command_parser
from cycada.errors import ConfigError
from cycada.training.core.seed_runs import read_seed_results
from cycada.training.core.seed_stats import parse_seeds, row_stats
from cycada.training.digits.ablation import DIGITS_TABLE

SHIFTS = {
    "usps->mnist": ["--source", "usps", "--target", "mnist", "--target-split", "test"],
    "mnist->usps": [
        *("--source", "mnist", "--target", "usps", "--source-split", "test"),
        *("--target-split", "train", "--eval-split", "test"),
    ],
}
# Table 2 of the paper, target accuracy % as mean ± sd, for the rows this benchmark runs
PAPER = {
    "usps->mnist": {"source_only": "69.6 ± 3.8", "adda": "90.1 ± 0.8", "full": "96.5 ± 0.1"},
    "mnist->usps": {"source_only": "82.2 ± 0.8", "adda": "89.4 ± 0.2", "full": "95.6 ± 0.2"},
}
# the full row first: under a time limit, the row to compare with the paper is the one kept
DEFAULT_ROWS = "source_only,full,control,no_pixel"


def ablation_command(shift: str, args: argparse.Namespace, out: Path, sets: list[str]) -> list[str]:
    command = [sys.executable, "-m", "cycada.cli", "ablate", "digits", *SHIFTS[shift]]
    command += ["--preset", args.preset, "--data-root", args.data_root, "--device", args.device]
    if args.seeds:  # every seed of both shifts at once: small networks, a launch-bound GPU
        command += ["--seeds", ",".join(map(str, args.seeds)), "--jobs", str(len(args.seeds))]
    else:
        command += ["--seed", str(args.seed)]
    command += ["--rows", args.rows, "--quiet", "--out", str(out)]
    for item in sets:
        command += ["--set", item]
    return command


def run_shifts(args: argparse.Namespace) -> dict[str, Any]:
    """Both ablations at once; each one's exit code, wall seconds and rows."""
    started: dict[str, tuple[subprocess.Popen, float, Path]] = {}
    for shift in args.shifts:
        out = args.out / shift.replace("->", "2")
        out.mkdir(parents=True, exist_ok=True)
        log = open(out / "ablation.log", "w")  # noqa: SIM115 - closed when the process ends
        command = ablation_command(shift, args, out, args.set)
        # its own process group: a time limit stops the seeds it started too
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()  # the child holds its own descriptor
        started[shift] = (process, time.perf_counter(), out)
    finished: dict[str, float] = {}
    deadline = time.perf_counter() + args.time_limit if args.time_limit > 0 else float("inf")
    while len(finished) < len(started):  # each one's own end, whichever ends first
        for shift, (process, began, _) in started.items():
            if shift not in finished and process.poll() is not None:
                finished[shift] = round(time.perf_counter() - began, 1)
            elif shift not in finished and time.perf_counter() > deadline:
                os.killpg(process.pid, signal.SIGKILL)  # finished rows are on disk already
                process.wait()
                finished[shift] = round(time.perf_counter() - began, 1)
        time.sleep(0.2)
    shifts: dict[str, Any] = {}
    for shift, (process, _, out) in started.items():
        code, seconds = process.returncode, finished[shift]
        if args.seeds:
            rows = rows_over_seeds(out, args.seeds, args.rows.split(","))
        else:
            results = out / "results.json"
            rows = json.loads(results.read_text())["rows"] if results.is_file() else []
        code = "time limit" if code == -signal.SIGKILL else code
        shifts[shift] = {"exit": code, "seconds": seconds, "rows": rows, "out": str(out)}
    return shifts


def rows_over_seeds(out: Path, seeds: list[int], rows: list[str]) -> list[dict[str, Any]]:
    """Each row's mean over the seeds that finished it (``target_accuracy``), its standard
    deviation and count, read from the seeds' own folders (a time limit leaves no summary)."""

    per_seed, models = read_seed_results(DIGITS_TABLE, out, seeds)
    return [
        {
            "row": stats.row,
            "model": models[stats.row],
            "target_accuracy": round(stats.mean, 2),
            "sd": None if stats.sd is None else round(stats.sd, 2),
            "seeds": stats.n,
            "per_seed": {str(seed): value for seed, value in stats.per_seed.items()},
        }
        for stats in row_stats(per_seed, rows)
    ]


def ours(row: dict[str, Any]) -> str:
    """``96.12`` for one seed; ``96.12 ± 0.31 (3 seeds)`` over several, as the paper reports."""
    if "seeds" not in row:
        return f"{row['target_accuracy']:.2f}"
    spread = "" if row["sd"] is None else f" ± {row['sd']:.2f}"
    return f"{row['target_accuracy']:.2f}{spread} ({row['seeds']} seed{'s' * (row['seeds'] > 1)})"


def table(shifts: dict[str, Any]) -> str:
    lines = [
        "| shift | row | ours, target % | paper, target % |",
        "| --- | --- | ---: | ---: |",
    ]
    walls = []
    for shift, done in shifts.items():
        paper = PAPER[shift]
        for row in done["rows"]:
            reference = paper.get(row["row"], paper["adda"] if row["row"] == "no_pixel" else None)
            lines.append(f"| {shift} | {row['model']} | {ours(row)} | {reference or ''} |")
        if done["exit"] != 0:
            stopped = (
                f"*{done['exit']}*" if isinstance(done["exit"], str) else f"*exit {done['exit']}*"
            )
            lines.append(f"| {shift} | {stopped}, see {done['out']}/ablation.log | | |")
        walls.append(f"{shift} {done['seconds']} s")
    note = (
        "\nThe paper's feature-only figure is ADDA's (Table 2), which the no-pixel row is. "
        "Offline, U→M adapts to and is measured on MNIST t10k, and M→U trains on MNIST t10k "
        "(10k labelled images; the paper: 60k).\n"
    )
    return "\n".join(lines) + "\n" + note + f"\nWall time, each shift: {', '.join(walls)}.\n"


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        "bench digits-paper",
        __doc__.splitlines()[0],
        "cycada bench digits-paper --device cuda --seeds 0-2 --out runs/digits-paper",
    )
    parser.add_argument("--out", type=Path, required=True, help="results folder")
    parser.add_argument("--data-root", default="../shared/data", help="USPS and MNIST folder")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--preset", default="paper", choices=["paper", "quick"])
    parser.add_argument("--rows", default=DEFAULT_ROWS, help=f"ablation rows ({DEFAULT_ROWS})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--seeds",
        type=parse_seeds,
        help="several seeds (e.g. 0-2), all at once: each row as mean ± sd, as the paper's "
        "Table 2 reports it (overrides --seed)",
    )
    parser.add_argument(
        "--shifts",
        default=",".join(SHIFTS),
        type=lambda text: text.split(","),
        help=f"comma-separated ({', '.join(SHIFTS)})",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=0.0,
        help="seconds; then stop both and report the rows finished (default: none)",
    )
    args = parser.parse_args(argv)
    unknown = [shift for shift in args.shifts if shift not in SHIFTS]
    if unknown:
        raise ConfigError(f"--shifts: unknown shift '{unknown[0]}' (valid: {', '.join(SHIFTS)})")

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: no CUDA device is available here")
    began = time.perf_counter()
    shifts = run_shifts(args)
    wall = round(time.perf_counter() - began, 1)
    markdown = table(shifts) + f"\nBoth shifts at once: {wall} s wall.\n"
    write_results(args.out, "digits-paper", {"wall_seconds": wall, "shifts": shifts}, markdown)
    print(markdown)
    return 0 if all(done["exit"] == 0 for done in shifts.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
