"""End-to-end segmentation runs on tiny synthetic scenes (game style → camera style)."""

from __future__ import annotations

import json

import pytest

from cycada.errors import CheckpointError
from cycada.training.data.scene_writer import write_scene_dataset
from cycada.training.seg_cli import seg_row_config
from cycada.training.seg_config import resolve_seg_config
from cycada.training.seg_eval import evaluate_seg_checkpoint
from cycada.training.seg_pipeline import run_seg

pytestmark = pytest.mark.slow

TINY = [
    "model=fastscnn",
    "data.resize_width=128",
    "data.workers=0",
    "source.iterations=6",
    "source.batch_size=2",
    "source.crop=64",
    "pixel.max_steps=3",
    "pixel.crop=32",
    "pixel.generator_width=8",
    "pixel.discriminator_width=8",
    "pixel.sample_every=2",
    "target.iterations=4",
    "target.batch_size=2",
    "target.crop=64",
    "feature.iterations=6",
    "feature.crop=64",
    "feature.gate_window=2",
    "feature.gate_threshold=0.0",
    "eval_panels=2",
]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    write_scene_dataset(root / "gta5", 6, "game", "gta5", 128, 64)
    write_scene_dataset(
        root / "cityscapes", 6, "camera", "cityscapes", 128, 64, split="train", labels=False
    )
    write_scene_dataset(
        root / "cityscapes", 3, "camera", "cityscapes", 128, 64, split="val", seed=1
    )
    return root


def tiny(scenes, *extra):
    return resolve_seg_config(
        "quick", sets=[*TINY, *extra], overrides={"data": {"data_root": str(scenes)}}
    )


def test_full_seg_run(tmp_path, scenes):
    metrics = run_seg(tiny(scenes), tmp_path, quiet=True)
    assert list(metrics["stages"]) == ["source", "target", "feature"]
    for stage in metrics["stages"].values():
        target = stage["target"]
        assert {"miou", "fwiou", "pixel_accuracy", "mean_class_accuracy"} <= set(target)
        assert 0.0 <= target["miou"] <= 1.0 and target["dataset"] == "cityscapes/val"
    assert metrics["final"]["stage"] == "feature"
    manifest = json.loads((tmp_path / "translated" / "dataset.json").read_text())
    assert manifest["images"] == 6
    assert len(list((tmp_path / "translated" / "images").glob("*.png"))) == 6
    assert len(list((tmp_path / "translated" / "labels").glob("*.png"))) == 6
    table = (tmp_path / "tables" / "table.md").read_text().splitlines()
    assert table[0].startswith("| Model | road | sidewalk | building |")
    assert len(table) == 5  # header, rule, three rows
    assert len(list((tmp_path / "eval" / "feature" / "panels").glob("*.png"))) == 2
    assert list((tmp_path / "samples").glob("pixel_step*.png"))
    for stage in ("source", "pixel", "target", "feature"):
        assert (tmp_path / "checkpoints" / f"{stage}.safetensors").exists()
    again = run_seg(tiny(scenes), tmp_path, quiet=True)  # everything finished: nothing reruns
    assert again["final"] == metrics["final"]
    assert (tmp_path / "log.txt").read_text().count("finished output found") >= 4

    out = tmp_path / "eval-cli"
    line = evaluate_seg_checkpoint(
        tmp_path / "checkpoints" / "feature.safetensors",
        "cityscapes",
        "val",
        str(scenes),
        out,
        tmp_path / "checkpoints" / "source.safetensors",
        0,
    )
    assert "mIoU" in line and (out / "table.csv").exists()


def test_table5_rows(tmp_path, scenes):
    feature_only = run_seg(seg_row_config(tiny(scenes), "feature_only"), tmp_path / "f", quiet=True)
    assert list(feature_only["stages"]) == ["source", "feature"]
    no_cycle = seg_row_config(tiny(scenes), "pixel_only_no_cycle")
    assert no_cycle.pixel.lambda_cycle == 0 and not no_cycle.feature.enabled
    oracle = seg_row_config(tiny(scenes), "oracle")
    assert (oracle.data.source, oracle.data.source_split) == ("cityscapes", "train")
    assert not oracle.pixel.enabled and not oracle.feature.enabled


def test_stage_order_and_class_count_errors(tmp_path, scenes):
    with pytest.raises(CheckpointError, match="stage 'source' has no finished output"):
        run_seg(tiny(scenes), tmp_path, stages=["pixel"], quiet=True)
    run_seg(
        tiny(scenes, "pixel.enabled=false", "feature.enabled=false"), tmp_path / "a", quiet=True
    )
    with pytest.raises(CheckpointError, match="does not match"):
        from cycada.checkpoint import load_modules
        from cycada.training.models.segmenters import FastSCNN

        load_modules(
            tmp_path / "a" / "checkpoints" / "source.safetensors", {"task_src": FastSCNN(13)}
        )
