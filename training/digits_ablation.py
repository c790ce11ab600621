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
from cycada.training.digits_config import DigitsRunConfig
from cycada.training.digits_pipeline import run_digits

ROWS: dict[str, str] = {
    "source_only": "Source only",
    "no_feat_no_semantic": "CyCADA - no feat adapt, no semantic loss",
    "no_feat": "CyCADA - no feat adapt",
    "no_cycle": "CyCADA - no cycle consistency",
    "no_pixel": "CyCADA - no pixel adapt",
    "full": "CyCADA (Full)",
}


def row_config(config: DigitsRunConfig, row: str) -> DigitsRunConfig:
    """The run config of one ablation row, derived from the full-method config."""
    pixel, feature = config.pixel, config.feature
    changes = {
        "source_only": dict(
            pixel=dataclasses.replace(pixel, enabled=False),
            feature=dataclasses.replace(feature, enabled=False),
        ),
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
    rows = rows or list(ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise ConfigError(f"unknown ablation row '{unknown[0]}' (valid: {', '.join(ROWS)})")
    data = config.data
    if not data.eval_set and data.target.startswith("folder:"):
        from cycada.training.data.digits import load_digits

        if not load_digits(data.target, data.target_split, data.data_root).labelled:
            raise ConfigError(
                f"the ablation table is of target accuracy, and {data.target} has no labels; "
                "pass a labelled --eval-set"
            )
    results: list[dict[str, Any]] = []
    for row in rows:
        metrics = run_digits(
            row_config(config, row),
            out_dir / row,
            stage_cache=out_dir / "_stage_cache",
            quiet=quiet,
        )
        final = metrics["final"]
        results.append(
            {
                "row": row,
                "model": ROWS[row],
                "final_stage": final["stage"],
                "source_accuracy": round(100 * final["source_accuracy"], 2),
                "target_accuracy": round(100 * final["target_accuracy"], 2),
            }
        )
        _write_tables(out_dir, config, results)
    return (out_dir / "results.md").read_text()


def _write_tables(out_dir: Path, config: DigitsRunConfig, results: list[dict[str, Any]]) -> None:
    data = config.data
    title = (
        f"Ablation of CyCADA on {data.source}→{data.target} "
        f"(target accuracy on {data.eval_set or data.target}/{data.eval_split}, %)"
    )
    lines = [
        f"# {title}",
        "",
        "| Model | Target accuracy (%) | Source accuracy (%) |",
        "| --- | ---: | ---: |",
    ]
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
