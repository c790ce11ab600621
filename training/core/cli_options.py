"""The command-line options both tasks' ``train`` and ``ablate`` commands share, and how given
options become config overrides (options left out keep what the preset or ``--config`` says)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cycada.command_line import add_quiet
from cycada.errors import ConfigError
from cycada.training.core.presets import preset_names

# the data-section keys that both tasks take from the command line
SHARED_DATA_KEYS = (
    "source",
    "target",
    "data_root",
    "source_split",
    "target_split",
    "eval_split",
    "eval_set",
)


def add_run_options(
    parser: argparse.ArgumentParser,
    task: str,
    source_help: str,
    target_help: str,
    eval_split_help: str,
    eval_set_help: str,
    preset_help: str,
) -> None:
    """Domains, splits, preset/config/--set, seed, device, run folder and quiet."""
    parser.add_argument("--source", metavar="NAME", help=source_help)
    parser.add_argument("--target", metavar="NAME", help=target_help)
    parser.add_argument(
        "--data-root",
        help="folder holding the data sets (default: $CYCADA_DATA or ../shared/data)",
    )
    parser.add_argument("--preset", default="paper", choices=preset_names(task), help=preset_help)
    parser.add_argument("--config", help="YAML file of overrides, applied after the preset")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, e.g. --set pixel.lambda_semantic=0",
    )
    parser.add_argument("--source-split", help="source training split (default train)")
    parser.add_argument("--target-split", help="unlabelled target split (default train)")
    parser.add_argument("--eval-split", help=eval_split_help)
    parser.add_argument("--eval-set", metavar="NAME", help=eval_set_help)
    parser.add_argument("--seed", type=int, help="random seed (same seed, same metrics on CPU)")
    parser.add_argument("--device", help="auto (default), cpu or cuda[:N]")
    parser.add_argument("--out", required=True, type=Path, help="run folder")
    add_quiet(parser)


def given_overrides(
    args: argparse.Namespace, data_keys: tuple[str, ...], run_keys: tuple[str, ...]
) -> dict[str, Any]:
    """``{"data": {...}, key: value}`` of the options that were given (not None)."""
    data = {k: getattr(args, k) for k in data_keys if getattr(args, k, None) is not None}
    overrides: dict[str, Any] = {"data": data}
    overrides.update({k: getattr(args, k) for k in run_keys if getattr(args, k) is not None})
    return overrides


def add_seed_options(parser: argparse.ArgumentParser) -> None:
    """``--seeds`` and ``--jobs`` of an ablate command (:mod:`.seed_runs`)."""
    parser.add_argument(
        "--seeds",
        metavar="LIST",
        help="run the rows once per seed (e.g. 0-4 or 0,2,5) into OUT/seed-N, then one table of "
        "each row's mean and spread and the paired differences (full against each other row, "
        "each adapted row against the control) with a 95%% interval and whether the gap is "
        "larger than the seed-to-seed noise",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="with --seeds: seeds run at once, each its own process with the CPU's threads "
        "split between them (default 1)",
    )


def check_jobs_without_seeds(args: argparse.Namespace) -> None:
    if args.jobs != 1:
        raise ConfigError(f"--jobs {args.jobs}: runs seeds at once, and needs --seeds")
