"""`cycada train digits`, `cycada ablate digits` and `cycada eval digits`."""

from __future__ import annotations

import argparse
from pathlib import Path

from cycada.training.core.cli_options import (
    SHARED_DATA_KEYS,
    add_run_options,
    add_seed_options,
    check_jobs_without_seeds,
    given_overrides,
)
from cycada.training.core.presets import DEFAULT_DATA_ROOT
from cycada.training.digits.config import STAGES, resolve_digits_config
from cycada.training.digits.data import DIGIT_DATASETS


def add_common_options(parser: argparse.ArgumentParser) -> None:
    add_run_options(
        parser,
        "digits",
        source_help=f"labelled source domain (default usps): {', '.join(DIGIT_DATASETS)}",
        target_help="target domain (default mnist), labels never used (same names; folder:PATH "
        "of images without class subfolders is unlabelled)",
        eval_split_help="evaluation split of both domains (default test). Digit splits take "
        "a slice, SPLIT[START:STOP] in counts or percentages: --target-split 'test[:50%%]' "
        "--eval-split 'test[50%%:]' evaluates on images the adaptation never saw",
        eval_set_help="a labelled domain to measure the target side on (default: the target "
        "itself; an unlabelled folder target without it gets label-free signals only)",
        preset_help="paper: appendix A.1.1 schedule; quick: minutes on a CPU",
    )
    parser.add_argument(
        "--mode",
        choices=["staged", "joint", "alternating"],
        help="staged: stages 2-4 one after another; joint: one loop on Eq. 7's single objective "
        "(f_T's losses reach G_S→T); alternating: one loop, pixel then feature steps",
    )


def config_from_args(args: argparse.Namespace):
    """Options given on the command line override the preset and ``--config``; options left out
    keep what ``--config`` (e.g. a run's ``config.yaml``) says."""
    overrides = given_overrides(args, SHARED_DATA_KEYS, ("seed", "device", "mode"))
    defaults = {"data": {"source": "usps", "target": "mnist", "data_root": DEFAULT_DATA_ROOT}}
    return resolve_digits_config(args.preset, args.config, args.sets, overrides, defaults)


def cmd_train_digits(args: argparse.Namespace) -> int:
    # imported when the command runs: the command line starts without it
    from cycada.training.digits.pipeline import run_digits

    config = config_from_args(args)
    stages = [args.stage] if args.stage else None
    metrics = run_digits(config, args.out, stages=stages, restart=args.restart, quiet=args.quiet)
    final = metrics.get("final", {})
    if final and "target_accuracy" in final:
        print(
            f"{final['stage']}: target accuracy {final['target_accuracy']:.2%} "
            f"({metrics['protocol']['target_eval']}); results in {args.out}"
        )
    elif final:
        signals = final["label_free"]
        print(
            f"{final['stage']}: no labelled evaluation set; label-free: mean confidence "
            f"{signals['mean_confidence']:.1%}, class-share distance to source labels "
            f"{signals['class_share_distance']:.1%}; results in {args.out}"
        )
    return 0


def cmd_ablate_digits(args: argparse.Namespace) -> int:
    # imported when the command runs: the command line starts without it
    from cycada.training.core.seed_runs import check_ablation_folder, run_seeds_from_args
    from cycada.training.digits.ablation import DEFAULT_ROWS, DIGITS_TABLE, run_ablation

    config = config_from_args(args)
    rows = args.rows.split(",") if args.rows else None
    if args.seeds is not None:
        print(run_seeds_from_args(DIGITS_TABLE, config, args, rows or DEFAULT_ROWS))
        return 0
    check_jobs_without_seeds(args)
    check_ablation_folder(args.out, over_seeds=False)
    table = run_ablation(config, args.out, rows=rows, quiet=args.quiet)
    print(table)
    return 0


def cmd_eval_digits(args: argparse.Namespace) -> int:
    # imported when the command runs: the command line starts without it
    from cycada.training.digits.eval import evaluate_checkpoint

    print(evaluate_checkpoint(args.checkpoint, args.dataset, args.split, args.data_root, args.out))
    return 0


def register(
    train: argparse._SubParsersAction,
    ablate: argparse._SubParsersAction,
    evaluate: argparse._SubParsersAction,
) -> None:
    parser = train.add_parser(
        "digits",
        help="CyCADA on digit classification (Tables 2 and 3)",
        description="Train all stages (or one with --stage) of CyCADA on digits.",
        epilog="example:\n  cycada train digits --source usps --target mnist --preset quick "
        "--target-split test --out runs/u2m",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_options(parser)
    parser.add_argument(
        "--stage",
        choices=STAGES,
        help="run only this stage, from the earlier stages' checkpoints in --out",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="discard checkpoints of the (requested and later) stages and retrain",
    )
    parser.set_defaults(handler=cmd_train_digits)

    parser = ablate.add_parser(
        "digits",
        help="the ablation rows of Table 3 into one results table",
        description="Runs Table 3's rows (source only; no feature, no semantic; no feature; no "
        "cycle; no pixel; full), the equal-iterations source-only control and the "
        "target-supervised row; --rows adds joint and alternating. Shared stages are trained "
        "once. --seeds repeats the rows over seeds and says which gaps exceed the noise.",
        epilog="examples:\n  cycada ablate digits --source usps --target mnist --preset quick "
        "--target-split test --out runs/ablation\n  cycada ablate digits --source usps --target "
        "mnist --preset quick --target-split test \\\n      --rows control,no_pixel,full "
        "--seeds 0-4 --jobs 2 --out runs/ablation-seeds",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_options(parser)
    parser.add_argument(
        "--rows",
        help="comma-separated rows: source_only, control, no_feat_no_semantic, no_feat, no_cycle, "
        "no_pixel, full, joint, alternating, target_supervised (default: all but joint and "
        "alternating)",
    )
    add_seed_options(parser)
    parser.set_defaults(handler=cmd_ablate_digits)

    parser = evaluate.add_parser(
        "digits",
        help="accuracy of a digits checkpoint on a data set",
        epilog="example:\n  cycada eval digits runs/u2m/checkpoints/feature.safetensors "
        "--dataset mnist --split test",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--dataset", required=True, help=", ".join(DIGIT_DATASETS))
    parser.add_argument("--split", default="test")
    parser.add_argument("--data-root", default=DEFAULT_DATA_ROOT)
    parser.add_argument("--out", type=Path, help="write metrics.json and a confusion PNG here")
    parser.set_defaults(handler=cmd_eval_digits)
