"""The ablation rows of the paper's Table 3, run as one command into one results table.

Rows share what they can: every row's stage checkpoints go to ``OUT/_stage_cache`` keyed by the
configs they depend on, so e.g. the source model is trained once and the pixel stage with the
semantic loss once for "no feature adapt" and "full".
"""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path
from typing import Any

from cycada.atomic import write_json_atomic, write_text_atomic
from cycada.errors import ConfigError
from cycada.training.core.pipeline import CONTROL_NOTE
from cycada.training.core.seed_runs import AblationTable
from cycada.training.digits.config import DigitsRunConfig
from cycada.training.digits.data import load_digits
from cycada.training.digits.pipeline import run_digits

ROWS: dict[str, str] = {
    "source_only": "Source only",
    "control": "Source only, as many f_T iterations as full (control)",
    "no_feat_no_semantic": "CyCADA - no feat adapt, no semantic loss",
    "no_feat": "CyCADA - no feat adapt",
    "no_cycle": "CyCADA - no cycle consistency",
    "no_pixel": "CyCADA - no pixel adapt",
    "full": "CyCADA (Full)",
    "joint": "CyCADA joint (Eq. 7, one objective)",
    "alternating": "CyCADA joint, alternating steps",
    "target_supervised": "Target fully supervised",
}
# what a bare `cycada ablate digits` runs: Table 3's rows with the control beside them
DEFAULT_ROWS = [
    "source_only",
    "control",
    "no_feat_no_semantic",
    "no_feat",
    "no_cycle",
    "no_pixel",
    "full",
    "target_supervised",
]


def control_epochs(config: DigitsRunConfig, source_size: int, target_size: int) -> int:
    """Source-only epochs with at least as many optimizer steps as f_S and f_T get in the full
    method (source stage + target stage + every feature epoch), so a gain of the full method
    over the control is not a gain from training longer."""
    batch = config.source.batch_size
    per_source_epoch = -(-source_size // batch)
    steps = config.source.epochs * per_source_epoch
    steps += config.target.epochs * -(-source_size // config.target.batch_size)
    if config.feature.enabled:
        per_feature_epoch = max(source_size, target_size) // config.feature.batch_size or 1
        steps += config.feature.max_epochs * per_feature_epoch
    return -(-steps // per_source_epoch)


def row_config(
    config: DigitsRunConfig, row: str, sizes: tuple[int, int] = (0, 0)
) -> DigitsRunConfig:
    """The run config of one ablation row, derived from the full-method config. ``sizes``
    (source and target training images) sets the control row's length."""
    pixel, feature = config.pixel, config.feature
    off = dict(
        pixel=dataclasses.replace(pixel, enabled=False),
        feature=dataclasses.replace(feature, enabled=False),
    )
    if row == "control":
        epochs = control_epochs(config, *sizes)
        return dataclasses.replace(
            config, mode="staged", source=dataclasses.replace(config.source, epochs=epochs), **off
        )
    if row in ("joint", "alternating"):
        return dataclasses.replace(config, mode=row)
    if row == "target_supervised":  # the target's own labelled training split as the source
        data = dataclasses.replace(
            config.data, source=config.data.target, source_split=config.data.target_split
        )
        return dataclasses.replace(config, mode="staged", data=data, **off)
    changes = {
        "source_only": off,
        "no_feat_no_semantic": dict(
            pixel=dataclasses.replace(pixel, lambda_semantic=0.0),
            feature=dataclasses.replace(feature, enabled=False),
        ),
        "no_feat": dict(feature=dataclasses.replace(feature, enabled=False)),
        "no_cycle": dict(pixel=dataclasses.replace(pixel, lambda_cycle=0.0)),
        "no_pixel": dict(pixel=dataclasses.replace(pixel, enabled=False)),
        "full": {},
    }[row]
    return dataclasses.replace(config, mode="staged", **changes)


def run_ablation(
    config: DigitsRunConfig, out_dir: Path, rows: list[str] | None = None, quiet: bool = False
) -> str:

    rows = rows or DEFAULT_ROWS
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise ConfigError(f"unknown ablation row '{unknown[0]}' (valid: {', '.join(ROWS)})")
    data = config.data

    def size(name: str, split: str) -> int:
        found = load_digits(name, split, data.data_root, data.synthetic_size, config.seed)
        return len(found.head(data.max_samples))

    target = load_digits(data.target, data.target_split, data.data_root, data.synthetic_size)
    if not data.eval_set and not target.labelled:
        raise ConfigError(
            f"the ablation table is of target accuracy, and {data.target} has no labels; "
            "pass a labelled --eval-set"
        )
    if "target_supervised" in rows and not target.labelled:
        raise ConfigError(f"row target_supervised needs labels on {data.target}, which has none")
    sizes = (size(data.source, data.source_split), len(target.head(data.max_samples)))
    model = config.model
    results: list[dict[str, Any]] = []
    for row in rows:
        row_cfg = row_config(config, row, sizes)
        if row == "target_supervised":  # the same network as the other rows, not re-chosen
            row_cfg = dataclasses.replace(row_cfg, model=model)
        metrics = run_digits(
            row_cfg, out_dir / row, stage_cache=out_dir / "_stage_cache", quiet=quiet
        )
        model = metrics.get("model", model)
        final = metrics["final"]
        trained_on_eval = row == "target_supervised" and data.target_split == data.eval_split
        results.append(
            {
                "row": row,
                "model": ROWS[row] + (" (trained on the evaluation images)" * trained_on_eval),
                "final_stage": final["stage"],
                "source_epochs": row_cfg.source.epochs,
                "source_accuracy": round(100 * final["source_accuracy"], 2),
                "target_accuracy": round(100 * final["target_accuracy"], 2),
            }
        )
        _write_tables(out_dir, config, results)
    return (out_dir / "results.md").read_text()


# rows that adapt: their gain over the equal-iterations control is the gain from adaptation
NOT_ADAPTED = ("source_only", "control", "target_supervised")
# the table over seeds (`cycada ablate digits --seeds`)
DIGITS_TABLE = AblationTable(
    task="digits",
    names=ROWS,
    short={
        "source_only": "source only",
        "control": "control",
        "no_feat_no_semantic": "no feat, no semantic",
        "no_feat": "pixel-only",
        "no_cycle": "no cycle",
        "no_pixel": "feature-only",
        "full": "full",
        "joint": "joint",
        "alternating": "alternating",
        "target_supervised": "target supervised",
    },
    not_adapted=NOT_ADAPTED,
    metric="target_accuracy",
    metric_name="target accuracy",
)


def with_gain_over_control(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with ``over_control``: an adapted row's target accuracy minus the control's, in
    points (None for the rows that do not adapt, or while the table has no control row)."""
    control = next((r["target_accuracy"] for r in results if r["row"] == "control"), None)
    return [
        {
            **r,
            "over_control": None
            if control is None or r["row"] in NOT_ADAPTED
            else round(r["target_accuracy"] - control, 2),
        }
        for r in results
    ]


def _write_tables(out_dir: Path, config: DigitsRunConfig, results: list[dict[str, Any]]) -> None:
    data = config.data
    title = (
        f"Ablation of CyCADA on {data.source}→{data.target} "
        f"(target accuracy on {data.eval_set or data.target}/{data.eval_split}, %)"
    )
    results = with_gain_over_control(results)
    has_control = any(r["row"] == "control" for r in results)
    lines = [f"# {title}", ""]
    if has_control:
        lines += [
            "| Model | Target accuracy (%) | Over the control (points) | Source accuracy (%) |",
            "| --- | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {r['model']} | {r['target_accuracy']:.2f} | "
            + ("" if r["over_control"] is None else f"{r['over_control']:+.2f}")
            + f" | {r['source_accuracy']:.2f} |"
            for r in results
        ]
        lines += ["", CONTROL_NOTE]
    else:
        lines += ["| Model | Target accuracy (%) | Source accuracy (%) |", "| --- | ---: | ---: |"]
        lines += [
            f"| {r['model']} | {r['target_accuracy']:.2f} | {r['source_accuracy']:.2f} |"
            for r in results
        ]
    write_text_atomic(out_dir / "results.md", "\n".join(lines) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(results[0]))
    writer.writeheader()
    writer.writerows(results)
    write_text_atomic(out_dir / "results.csv", buffer.getvalue())
    write_json_atomic(out_dir / "results.json", {"title": title, "rows": results})
