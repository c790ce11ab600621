"""`cycada train seg`, `cycada eval seg`, `cycada ablate seg` and `cycada data scenes|clip`."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from cycada.atomic import expect_mp4, make_output_folder, write_json_atomic, write_text_atomic
from cycada.command_line import add_network, at_least_one, positive
from cycada.command_line import help_text as command_help
from cycada.errors import ConfigError, DataError
from cycada.sizes import image_size
from cycada.training.core.cli_options import (
    SHARED_DATA_KEYS,
    add_run_options,
    add_seed_options,
    check_jobs_without_seeds,
    given_overrides,
)
from cycada.training.core.presets import DEFAULT_DATA_ROOT
from cycada.training.core.seed_runs import AblationTable
from cycada.training.segmentation.config import (
    SEG_DATASETS,
    SEG_STAGES,
    SegRunConfig,
    resolve_seg_config,
)

EXAMPLE_TRAIN = (
    "cycada train seg --source gta5 --target cityscapes --network drn26 --preset paper "
    "--data-root /data --out runs/gta2cs"
)
SEG_ABLATION_ROWS = {  # Table 5's rows as the paper ran them (no semantic loss), and ours
    "source_only": "Source only",
    "control": "Source only, as many iterations as CyCADA (control)",
    "feature_only": "CyCADA feature-only",
    "pixel_only_no_cycle": "CyCADA pixel-only w/o cycle",
    "pixel_only": "CyCADA pixel-only",
    "full": "CyCADA",
    "full_semantic": "CyCADA + semantic loss (ours)",
}
# the table over seeds (`cycada ablate seg --seeds`)
SEG_TABLE = AblationTable(
    task="seg",
    names=SEG_ABLATION_ROWS,
    short={
        "source_only": "source only",
        "control": "control",
        "feature_only": "feature-only",
        "pixel_only_no_cycle": "pixel-only w/o cycle",
        "pixel_only": "pixel-only",
        "full": "full",
        "full_semantic": "full + semantic",
    },
    not_adapted=("source_only", "control"),
    metric="miou",
    metric_name="mIoU",
)


def _with_format(
    parser_factory, name: str, help_text: str, example: str
) -> argparse.ArgumentParser:
    return parser_factory.add_parser(name, help=help_text, **command_help(help_text, example))


def add_seg_options(parser: argparse.ArgumentParser) -> None:
    add_run_options(
        parser,
        "seg",
        source_help=f"labelled source domain (default gta5): {', '.join(SEG_DATASETS)}",
        target_help="target domain (default cityscapes), its labels never used: the same names, "
        "or unlabelled folder:IMAGES or video:PATH (a video, a folder of videos, or a text file "
        "listing them)",
        eval_split_help="labelled split of --eval-set (or of the target) to evaluate on",
        eval_set_help="a labelled domain to evaluate on (e.g. camvid, cityscapes, "
        "folder:IMAGES:LABELS:MAPPING); default: the target's --eval-split, and none for an "
        "unlabelled target (label-free signals only)",
        preset_help="paper: appendix A.1.2 schedule; quick and demo: CPU schedules",
    )
    add_network(
        parser, default=None, help="drn26 (paper B, default), fcn8s (paper A), fastscnn (CPU/edge)"
    )
    parser.add_argument("--source-root", help="folder of the source domain (default --data-root)")
    parser.add_argument("--target-root", help="folder of the target domain (default --data-root)")
    parser.add_argument("--eval-root", help="folder of --eval-set (default --data-root)")
    parser.add_argument(
        "--target-fps",
        type=_frame_rate,
        help="video: targets: frames kept per second of video (default 1; 'all' = every frame)",
    )
    parser.add_argument(
        "--target-max-frames",
        type=int,
        help="video: targets: at most this many frames over all videos (default: no cap)",
    )
    parser.add_argument("--label-space", choices=["cityscapes19", "synthia13"])
    parser.add_argument("--backbone-weights", help="local ImageNet weights file")


SEG_DATA_KEYS = (
    *SHARED_DATA_KEYS,
    "eval_root",
    "label_space",
    "source_root",
    "target_root",
    "target_fps",
    "target_max_frames",
)


def seg_config_from_args(args: argparse.Namespace) -> SegRunConfig:
    """Options given on the command line override the preset and ``--config``; options left out
    keep what ``--config`` (e.g. a run's ``config.yaml``) says."""
    run_keys = ("network", "seed", "device", "backbone_weights")
    overrides = given_overrides(args, SEG_DATA_KEYS, run_keys)
    if "network" in overrides:  # the config's key for the architecture is `model`
        overrides["model"] = overrides.pop("network")
    defaults = {"data": {"data_root": DEFAULT_DATA_ROOT}}
    return resolve_seg_config(args.preset, args.config, args.sets, overrides, defaults)


SEG_TABLE4_ROWS = {"source_only": "Source only", "oracle": "Oracle (train on target)"}


def control_iterations(config: SegRunConfig) -> int:
    """Iterations of the source-only control: as many as f_S and f_T get in the full method
    (source + target + feature stages), so a gain over it is not a gain from training longer."""
    total = config.source.iterations
    if config.pixel.enabled:
        total += config.target.iterations
    if config.feature.enabled:
        total += config.feature.iterations
    return total


def miou_over_control(results: dict[str, dict]) -> dict[str, float] | None:
    """mIoU of each adapted row minus the control's, by the row's table name (None without a
    control row): the gain that is not from training longer."""
    if "control" not in results:
        return None
    control = results["control"]["miou"]
    return {
        SEG_ABLATION_ROWS[row]: metrics["miou"] - control
        for row, metrics in results.items()
        if row not in ("source_only", "control")
    }


def seg_row_config(config: SegRunConfig, row: str) -> SegRunConfig:
    """Table 5 rows (feature-only, pixel-only without cycle, pixel-only, full; without the
    semantic loss, as the paper ran them for lack of GPU memory), our full + semantic row, the
    equal-iterations control, and Table 4's source-only and oracle rows (the labelled target
    train split as the source)."""
    no_adaptation = dict(
        pixel=dataclasses.replace(config.pixel, enabled=False),
        feature=dataclasses.replace(config.feature, enabled=False),
    )
    if row == "full_semantic":
        return config
    if row == "source_only":
        return dataclasses.replace(config, **no_adaptation)
    if row == "control":
        source = dataclasses.replace(config.source, iterations=control_iterations(config))
        return dataclasses.replace(config, source=source, **no_adaptation)
    if row == "oracle":
        data = dataclasses.replace(
            config.data,
            source=config.data.target,
            source_split="train",
            source_root=config.data.target_root,
        )
        return dataclasses.replace(config, data=data, **no_adaptation)
    pixel = dataclasses.replace(config.pixel, lambda_semantic=0.0)  # the paper's rows
    feature = config.feature
    config = dataclasses.replace(config, pixel=pixel)
    return {
        "feature_only": dataclasses.replace(
            config, pixel=dataclasses.replace(pixel, enabled=False)
        ),
        "pixel_only_no_cycle": dataclasses.replace(
            config,
            pixel=dataclasses.replace(pixel, lambda_cycle=0.0),
            feature=dataclasses.replace(feature, enabled=False),
        ),
        "pixel_only": dataclasses.replace(
            config, feature=dataclasses.replace(feature, enabled=False)
        ),
        "full": config,
    }[row]


def cmd_train_seg(args: argparse.Namespace) -> int:
    # imported when the command runs: the command line starts without it
    from cycada.training.segmentation.pipeline import run_seg

    config = seg_config_from_args(args)
    if args.row:
        config = seg_row_config(config, args.row)
    stages = [args.stage] if args.stage else None
    metrics = run_seg(config, args.out, stages=stages, restart=args.restart, quiet=args.quiet)
    final = metrics.get("final")
    if final:
        print(f"{final_line(final)}; results in {args.out}")
    return 0


def final_line(final: dict) -> str:
    """One line for a run's final stage: mIoU when labelled, the label-free signals otherwise."""
    parts = [final["stage"] + ":"]
    if final.get("evaluation") == "labelled":
        parts.append(f"mIoU {final['miou']:.2%} on {final['dataset']}")
    signals = final.get("label_free")
    if signals:
        agreement = signals["agreement_with_previous"]
        parts.append(
            ("and" if len(parts) > 1 else "no labelled evaluation set; label-free:")
            + f" mean confidence {signals['mean_confidence']:.1%}, class-share distance to "
            f"source labels {signals['class_share_distance']:.1%}"
            + ("" if agreement is None else f", agreement with the previous stage {agreement:.1%}")
        )
    return " ".join(parts)


def _frame_rate(text: str) -> float:
    """--target-fps: a positive number, or 'all' for every frame."""
    if text.strip().lower() in ("all", "inf"):
        return float("inf")
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a frame rate (frames per second > 0, or 'all')"
        ) from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0 (frames per second, or 'all')")
    return value


def cmd_eval_seg(args: argparse.Namespace) -> int:
    # imported when the command runs: the command line starts without it
    from cycada.training.segmentation.eval import evaluate_seg_checkpoint

    print(
        evaluate_seg_checkpoint(
            args.checkpoint,
            args.dataset,
            args.split,
            args.data_root,
            args.out,
            args.compare,
            args.max_samples,
        )
    )
    return 0


def cmd_data_scenes(args: argparse.Namespace) -> int:
    # imported when the command runs: the command line starts without it
    from cycada.training.segmentation.scene_writer import write_scene_dataset

    width, height = args.size
    make_output_folder(args.out)
    write_scene_dataset(
        args.out,
        args.count,
        args.style,
        args.layout,
        width,
        height,
        args.seed,
        args.split,
        quiet=False,
    )
    print(f"{args.count} {args.style} scenes in the {args.layout} layout in {args.out}")
    return 0


def cmd_data_clip(args: argparse.Namespace) -> int:
    # imported when the command runs: the command line starts without it
    from cycada.training.segmentation.scene_writer import write_clip

    width, height = args.size
    write_clip(expect_mp4(args.out), args.frames, width, height, args.style, args.fps, args.seed)
    print(f"{args.frames} frames written to {args.out}")
    return 0


def cmd_data_video(args: argparse.Namespace) -> int:
    # imported when the command runs: the command line starts without it
    from cycada.training.segmentation.scene_writer import write_image_video

    if not args.images.is_dir():
        raise DataError(f"--images {args.images}: expected a folder of images")
    count = write_image_video(args.images, expect_mp4(args.out), args.fps)
    print(f"{count} frames written to {args.out}")
    return 0


def register(train, ablate, evaluate, data) -> None:
    """The segmentation subcommands of `cycada train`, `ablate`, `eval` and `data`."""
    _register_training(train, ablate)
    _register_eval(evaluate)
    _register_data(data)


def _register_training(train, ablate) -> None:
    parser = _with_format(
        train, "seg", "CyCADA on semantic segmentation (Tables 4-6)", EXAMPLE_TRAIN
    )
    add_seg_options(parser)
    parser.add_argument("--stage", choices=SEG_STAGES, help="run only this stage")
    parser.add_argument(
        "--row",
        choices=sorted({**SEG_ABLATION_ROWS, **SEG_TABLE4_ROWS}),
        help="a Table 5 row as the paper ran it, without the semantic loss (feature_only, "
        "pixel_only_no_cycle, pixel_only, full); full_semantic (ours, with it); source_only; "
        "control (source only for as many iterations as source + target + feature); or oracle "
        "(trained on the target's labelled train split). Without --row: the config as given",
    )
    parser.add_argument("--restart", action="store_true")
    parser.set_defaults(handler=cmd_train_seg)

    parser = _with_format(
        ablate,
        "seg",
        "Table 5's rows as the paper ran them (no semantic loss), CyCADA + semantic loss, source "
        "only and the equal-iterations control; one run folder each, shared stages trained once",
        "cycada ablate seg --source gta5 --target cityscapes --out runs/t5",
    )
    add_seg_options(parser)
    parser.add_argument("--rows", help="comma-separated subset (default: all)")
    add_seed_options(parser)
    parser.set_defaults(handler=cmd_ablate_seg)


def _register_eval(evaluate) -> None:
    parser = _with_format(
        evaluate,
        "seg",
        "mIoU, fwIoU, pixel and class accuracy, per-class IoU",
        "cycada eval seg runs/gta2cs/checkpoints/feature.safetensors "
        "--dataset cityscapes --split val --out runs/gta2cs/eval-val",
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--dataset", required=True, help=", ".join(SEG_DATASETS))
    parser.add_argument("--split", default="val")
    parser.add_argument("--data-root", default=DEFAULT_DATA_ROOT)
    parser.add_argument(
        "--compare",
        type=Path,
        help="a second checkpoint (e.g. source only) shown beside in the panels",
    )
    parser.add_argument("--max-samples", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.set_defaults(handler=cmd_eval_seg)


def _register_data(data) -> None:
    parser = _with_format(
        data,
        "scenes",
        "render labelled synthetic driving scenes",
        "cycada data scenes --out data/synth-gta --count 500 --style game --layout gta5",
    )
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--count", type=at_least_one, default=100)
    parser.add_argument("--style", choices=["game", "camera"], default="game")
    parser.add_argument("--layout", choices=["gta5", "cityscapes"], default="gta5")
    parser.add_argument("--split", default="train", help="cityscapes layout split folder")
    parser.add_argument("--size", type=image_size, default=(1024, 512), help="WIDTHxHEIGHT")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=cmd_data_scenes)

    parser = _with_format(
        data,
        "clip",
        "render an MP4 of a camera driving a synthetic street",
        "cycada data clip --out data/clip.mp4 --frames 150 --size 512x256",
    )
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--frames", type=at_least_one, default=150)
    parser.add_argument("--style", choices=["game", "camera"], default="camera")
    parser.add_argument("--size", type=image_size, default=(512, 256), help="WIDTHxHEIGHT")
    parser.add_argument("--fps", type=positive("frames per second"), default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=cmd_data_clip)

    parser = _with_format(
        data,
        "video",
        "write the images of a folder (sorted by name) into an MP4, e.g. to try a video: target",
        "cycada data video --images ../shared/data/camvid/train --out data/camvid.mp4 --fps 10",
    )
    parser.add_argument("--images", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--fps", type=positive("frames per second"), default=10.0)
    parser.set_defaults(handler=cmd_data_video)


def results_records(results: dict[str, dict]) -> list[dict]:
    """The rows of ``results.json``: each row's mIoU, fwIoU and pixel accuracy in %, and its
    mIoU over the control in points (None for the rows that do not adapt, or without one)."""
    gains = miou_over_control(results) or {}
    records = []
    for row, metrics in results.items():
        gain = gains.get(SEG_ABLATION_ROWS[row])
        records.append(
            {
                "row": row,
                "model": SEG_ABLATION_ROWS[row],
                "miou": round(100 * metrics["miou"], 2),
                "fwiou": round(100 * metrics["fwiou"], 2),
                "pixel_accuracy": round(100 * metrics["pixel_accuracy"], 2),
                "over_control": None if gain is None else round(100 * gain, 2),
            }
        )
    return records


def cmd_ablate_seg(args: argparse.Namespace) -> int:
    from cycada.training.core.pipeline import CONTROL_NOTE
    from cycada.training.segmentation.label_free import label_free_csv, label_free_table
    from cycada.training.segmentation.metrics import table_csv, table_markdown
    from cycada.training.segmentation.pipeline import run_seg

    config = seg_config_from_args(args)
    rows = args.rows.split(",") if args.rows else list(SEG_ABLATION_ROWS)
    unknown = [r for r in rows if r not in SEG_ABLATION_ROWS]
    if unknown:
        raise ConfigError(f"unknown row '{unknown[0]}' (valid: {', '.join(SEG_ABLATION_ROWS)})")
    # imported when the command runs: the command line starts without it
    from cycada.training.core.seed_runs import check_ablation_folder, run_seeds_from_args

    if args.seeds is not None:
        print(run_seeds_from_args(SEG_TABLE, config, args, rows))
        return 0
    check_jobs_without_seeds(args)
    check_ablation_folder(args.out, over_seeds=False)
    results = {}
    label_free: dict = {}
    for row in rows:
        metrics = run_seg(
            seg_row_config(config, row),
            args.out / row,
            quiet=args.quiet,
            stage_cache=args.out / "_stage_cache",
        )
        final = metrics["stages"][metrics["final"]["stage"]]
        if "target" in final:
            results[row] = final["target"]
            named = {SEG_ABLATION_ROWS[r]: m for r, m in results.items()}
            gains = miou_over_control(results)
            note = "" if gains is None else f"\n{CONTROL_NOTE}\n"
            write_text_atomic(args.out / "results.md", table_markdown(named, gains) + note)
            write_text_atomic(args.out / "results.csv", table_csv(named, gains))
            write_json_atomic(args.out / "results.json", {"rows": results_records(results)})
        if "label_free" in final:
            label_free[SEG_ABLATION_ROWS[row]] = final["label_free"]
            write_text_atomic(args.out / "label_free.md", label_free_table(label_free))
            write_text_atomic(args.out / "label_free.csv", label_free_csv(label_free))
    if not results:
        print((args.out / "label_free.md").read_text())
        return 0
    print((args.out / "results.md").read_text())
    return 0
