"""`cycada eval seg`: evaluate a segmentation checkpoint on any split, Table 4 layout."""

from __future__ import annotations

from pathlib import Path

from cycada.atomic import write_json_atomic, write_text_atomic
from cycada.checkpoint import load_modules, read_header
from cycada.errors import CheckpointError, DataError
from cycada.training.segmentation import checkpoint_config
from cycada.training.segmentation.data import is_unlabelled_domain
from cycada.training.segmentation.metrics import table_csv, table_markdown
from cycada.training.segmentation.pipeline import SEG_STAGE_TABLE
from cycada.training.segmentation.run import SegRun


def evaluate_seg_checkpoint(
    checkpoint: Path,
    dataset: str,
    split: str,
    data_root: str,
    out: Path | None,
    compare: Path | None,
    max_samples: int,
) -> str:
    if is_unlabelled_domain(dataset):
        raise DataError(f"--dataset {dataset} has no labels; evaluation needs a labelled data set")
    config = checkpoint_config.seg_config(checkpoint)
    data = {
        "target": dataset,
        "eval_split": split,
        "source": dataset,
        "source_split": split,
        "target_split": split,
        "data_root": data_root,
    }
    config = checkpoint_config.replace_data(config, data, max_samples)
    run = SegRun(config, out or checkpoint.parent.parent / "eval-cli", SEG_STAGE_TABLE, quiet=True)
    model = _load_task_model(run, checkpoint)
    others = {}
    if compare is not None:
        others[compare.stem] = _load_task_model(run, compare)
    metrics = run.evaluator.evaluate(model, f"{dataset}-{split}", others)
    metrics["checkpoint"] = str(checkpoint)
    if out is not None:
        write_json_atomic(out / "metrics.json", metrics)
        write_text_atomic(out / "table.md", table_markdown({checkpoint.stem: metrics}))
        write_text_atomic(out / "table.csv", table_csv({checkpoint.stem: metrics}))
    run.log.close()
    return (
        f"{dataset}/{split}: mIoU {metrics['miou']:.2%}, fwIoU {metrics['fwiou']:.2%}, "
        f"pixel accuracy {metrics['pixel_accuracy']:.2%} ({len(run.evaluation)} images)"
    )


def _load_task_model(run, checkpoint: Path):
    _, meta = read_header(checkpoint)
    if meta.get("task") != "seg" or meta.get("stage") not in ("source", "target", "feature"):
        raise CheckpointError(f"{checkpoint} is not a segmentation task-model checkpoint")
    name = "task_src" if meta["stage"] == "source" else "task_tgt"
    model = run.new_segmenter(backbone=False)
    load_modules(checkpoint, {name: model})
    return model.eval()
