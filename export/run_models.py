"""The networks of a finished training run, rebuilt from its checkpoints, as serving endpoints.

A run folder (``--out`` of ``cycada train``) holds ``checkpoints/<stage>.safetensors``. Export
takes the task model of the stage the run's verdict ships (``metrics.json`` ``verdict``; without
one, the latest finished of feature, joint, target, source; ``--stage`` overrides) and, when the
pixel stage finished, both generators. A segmenter carries its stage's label-free signals as the
served model's baseline (``cycada.signals``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cycada.checkpoint import load_modules, read_header
from cycada.errors import CheckpointError
from cycada.models.endpoints import Endpoint, build_network

TASK_STAGES = ("feature", "joint", "target", "source")


def _checkpoint(run_dir: Path, stage: str) -> Path:
    return run_dir / "checkpoints" / f"{stage}.safetensors"


def _task_endpoint(task_path: Path, stage: str, meta: dict[str, Any]) -> Endpoint:
    """``segment`` or ``classify_digits``: the run's last finished task model."""
    name = "task_src" if stage == "source" else "task_tgt"
    class_names = list(meta["class_names"])
    common = dict(class_names=class_names, meta={**meta, "checkpoint": str(task_path)})
    if meta["task"] == "seg":
        builder = {"type": "segmenter", "name": meta["model"], "classes": len(class_names)}
        model = build_network(builder)
        load_modules(task_path, {name: model})
        return Endpoint(
            "segment", "segment", model.eval(), model.output_stride, 3, builder=builder, **common
        )
    builder = {"type": "task_net", "name": meta["model"], "classes": len(class_names)}
    model = build_network(builder)
    load_modules(task_path, {name: model})
    channels = int(meta["image_channels"])
    return Endpoint(
        "classify_digits", "classify", model.eval(), 1, channels, builder=builder, **common
    )


def _generator_endpoints(pixel_path: Path, channels: int) -> list[Endpoint]:
    """``translate_s2t`` and ``translate_t2s`` from the pixel stage's checkpoint."""
    pixel_config, pixel_meta = read_header(pixel_path)
    cfg = pixel_config["pixel"]
    builder = {
        "type": "generator",
        "name": cfg["generator"],
        "channels": channels,
        "width": cfg["generator_width"],
    }
    generators = {direction: build_network(builder) for direction in ("gen_src2tgt", "gen_tgt2src")}
    load_modules(pixel_path, generators, strict=True)
    endpoints = []
    for direction, endpoint_name in (
        ("gen_src2tgt", "translate_s2t"),
        ("gen_tgt2src", "translate_t2s"),
    ):
        generator = generators[direction].eval()
        endpoints.append(
            Endpoint(
                endpoint_name,
                "translate",
                generator,
                generator.stride,
                channels,
                out_channels=channels,
                meta={**pixel_meta, "checkpoint": str(pixel_path)},
                builder=dict(builder),
            )
        )
    return endpoints


def _run_metrics(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "metrics.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (OSError, json.JSONDecodeError):
        return {}  # a run without readable metrics still exports its latest stage


def choose_stage(run_dir: Path, stage: str | None = None) -> tuple[str, str]:
    """(stage, why): ``stage`` when given, else the run's verdict, else the latest finished."""
    finished = [s for s in TASK_STAGES if _checkpoint(run_dir, s).exists()]
    if stage is not None:
        if stage not in finished:
            raise CheckpointError(
                f"--stage {stage}: {run_dir} has no finished task model of that stage "
                f"(finished: {', '.join(finished) or 'none'})"
            )
        return stage, "chosen with --stage"
    if not finished:
        raise CheckpointError(
            f"{run_dir} has no finished task model (expected checkpoints/"
            f"{{{','.join(TASK_STAGES)}}}.safetensors)"
        )
    verdict = _run_metrics(run_dir).get("verdict") or {}
    if verdict.get("stage") in finished:
        return verdict["stage"], f"the run's verdict ({verdict['by']}: {verdict['reason']})"
    return finished[0], "the latest finished stage (the run records no verdict)"


def baseline_of(run_dir: Path, stage: str) -> dict[str, Any] | None:
    """The stage's label-free signals in metrics.json, as the served model's baseline."""
    signals = _run_metrics(run_dir).get("stages", {}).get(stage, {}).get("label_free")
    if not signals:
        return None
    keys = ("dataset", "frames", "mean_confidence", "low_confidence_share")
    return {
        "stage": stage,
        **{key: signals[key] for key in keys},
        "class_shares": signals["class_shares"],
        "source_class_shares": signals["source_class_shares"],
    }


def load_run_endpoints(run_dir: Path, stage: str | None = None) -> list[Endpoint]:
    """Every endpoint a run can serve (the task model of ``choose_stage``); errors name what is
    missing."""
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist (expected the --out of a run)")
    chosen, why = choose_stage(run_dir, stage)
    task_path = _checkpoint(run_dir, chosen)
    _, meta = read_header(task_path)
    if meta.get("task") not in ("seg", "digits"):
        raise CheckpointError(f"{task_path}: unknown task '{meta.get('task')}' in its metadata")
    task = _task_endpoint(task_path, chosen, meta)
    task.meta["stage_choice"] = why
    if meta["task"] == "seg":
        task.meta["baseline"] = baseline_of(run_dir, chosen)
    endpoints = [task]
    pixel_path = _checkpoint(run_dir, "pixel")
    if pixel_path.exists():
        endpoints += _generator_endpoints(pixel_path, task.in_channels)
    return endpoints
