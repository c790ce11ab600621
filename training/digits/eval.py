"""Evaluate a digits checkpoint (any stage's task network) on any digit data set split."""

from __future__ import annotations

from pathlib import Path

import torch

from cycada.atomic import write_json_atomic
from cycada.checkpoint import load_modules, read_header
from cycada.errors import CheckpointError
from cycada.models.digit_networks import build_task_net
from cycada.models.transforms import to_unit_range
from cycada.training.core.visuals import confusion_png
from cycada.training.digits.data import load_digits
from cycada.training.digits.metrics import classification_metrics, confusion_matrix, predict


def evaluate_checkpoint(
    checkpoint: Path, dataset: str, split: str, data_root: str, out_dir: Path | None = None
) -> str:
    config, meta = read_header(checkpoint)
    if meta.get("task", "digits") != "digits":
        raise CheckpointError(
            f"{checkpoint} is a {meta['task']} run's checkpoint, not a digits one: "
            f"cycada eval {meta['task']} evaluates it"
        )
    name = "task_tgt" if meta.get("stage") in ("target", "feature", "joint") else "task_src"
    if meta.get("stage") == "pixel":
        raise CheckpointError(f"{checkpoint} holds the pixel stage's generators, not a classifier")
    model = build_task_net(meta["model"], len(meta["class_names"]))
    load_modules(checkpoint, {name: model}, strict=True)
    data = load_digits(dataset, split, data_root, config["data"]["synthetic_size"], config["seed"])
    predictions = predict(model, to_unit_range(data.images), 1000, torch.device("cpu"))
    confusion = confusion_matrix(data.labels, predictions, len(meta["class_names"]))
    metrics = classification_metrics(confusion, meta["class_names"])
    metrics.update(dataset=f"{dataset}/{split}", checkpoint=str(checkpoint))
    if out_dir is not None:
        write_json_atomic(out_dir / "metrics.json", metrics)
        confusion_png(
            out_dir / "confusion.png",
            confusion,
            meta["class_names"],
            f"{dataset}/{split} accuracy {metrics['accuracy']:.2%}",
        )
    return (
        f"{dataset}/{split}: accuracy {metrics['accuracy']:.2%} ({metrics['num_samples']} images)"
    )
