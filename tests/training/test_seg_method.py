"""Tests that fail on a broken segmentation method: a feature stage that pushes the target score
maps the wrong way, a translate stage that writes the source untranslated, a stage that starts
from the wrong checkpoint, labels shifted by a class. Each runs the real stage code on tiny
networks and checks what it does, not the line that does it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cycada.training.core.losses.feature_gan import SOURCE_DOMAIN
from cycada.training.segmentation.config import resolve_seg_config
from cycada.training.segmentation.pipeline import SEG_STAGE_TABLE, run_seg
from cycada.training.segmentation.run import SegRun
from cycada.training.segmentation.scene_writer import write_scene_dataset
from tests.helpers import TINY_SEG

pytestmark = pytest.mark.slow

# Cityscapes' published ids (labelIds in the label PNGs, trainIds after the mapping)
ROAD_ID, SKY_ID = 7, 23
ROAD_TRAIN_ID, SKY_TRAIN_ID = 0, 10


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    write_scene_dataset(root / "gta5", 4, "game", "gta5", 128, 64)
    write_scene_dataset(
        root / "cityscapes", 4, "camera", "cityscapes", 128, 64, split="train", labels=False
    )
    write_scene_dataset(root / "cityscapes", 2, "camera", "cityscapes", 128, 64, split="val")
    return root


def tiny_run(scenes, out, *extra) -> SegRun:
    config = resolve_seg_config(
        "quick", sets=[*TINY_SEG, *extra], overrides={"data": {"data_root": str(scenes)}}
    )
    return SegRun(config, out, SEG_STAGE_TABLE, quiet=True)


def test_source_labels_load_as_the_classes_the_scene_shows(scenes, tmp_path):
    """The scenes put sky at the top and road at the bottom: the label PNG holds Cityscapes'
    raw ids there, and the loaded labels their train ids (a mapping off by one class fails)."""
    import cv2

    run = tiny_run(scenes, tmp_path)
    image, labels = run.source_train.load_raw(0)
    raw = cv2.imread(str(run.source_train.items[0].label), cv2.IMREAD_UNCHANGED)
    height, width = labels.shape
    assert raw[0, width // 2] == SKY_ID and raw[height - 1, width // 2] == ROAD_ID
    assert labels[0, width // 2] == SKY_TRAIN_ID and labels[height - 1, width // 2] == ROAD_TRAIN_ID
    assert run.space.classes[SKY_TRAIN_ID] == "sky" and run.space.classes[ROAD_TRAIN_ID] == "road"


def test_the_feature_stage_moves_the_target_score_maps_towards_source(
    scenes, tmp_path, monkeypatch
):
    """Gate open, no task loss, D_feat held (its rate ~0): after the stage, the target images'
    score maps are called "source" by that D_feat more often than before. Training f_T with
    the true (target) label instead of the inverted one lowers it."""
    from cycada.training.core.discriminators import ScoreMapDiscriminator
    from cycada.training.segmentation.stages import feature as feature_stage

    run = tiny_run(
        scenes, tmp_path, "feature.iterations=6", "feature.gate_window=1",
        "feature.gate_threshold=0.0", "feature.task_weight=0.0", "feature.disc_lr=1e-12",
        "feature.lr=1e-3",
    )  # fmt: skip
    torch.manual_seed(0)
    task = run.new_segmenter()
    held = ScoreMapDiscriminator(run.space.num_classes, run.config.feature.discriminator_channels)
    held = held.to(run.device)
    monkeypatch.setattr(feature_stage, "ScoreMapDiscriminator", lambda *a, **k: held)
    images = [run.target_train.load_raw(i)[0] for i in range(len(run.target_train))]
    batch = run.input(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2))

    def source_probability() -> float:
        task.eval()
        with torch.no_grad():
            return held(task.score_maps(batch)).softmax(1)[:, SOURCE_DOMAIN].mean().item()

    before = source_probability()
    trained, summary = feature_stage.train_feature(run, task, run.source_train)
    assert summary["generator_updates"] == 6
    assert trained is task and source_probability() > before


def test_the_translate_stage_writes_what_the_generator_makes(scenes, tmp_path):
    """translated/images/ holds G_S→T of each source image (here a colour inversion), beside
    the source's own labels: a stage writing the source untranslated, or the labels of
    another image, fails."""
    from cycada.training.segmentation.stages.pixel import translate_source

    class Inverter(torch.nn.Module):
        def forward(self, x):
            return -x

    run = tiny_run(scenes, tmp_path)
    translated = translate_source(run, Inverter(), "inverter")
    assert len(translated) == len(run.source_train)
    for index in range(len(run.source_train)):
        image, labels = run.source_train.load_raw(index)
        fake, fake_labels = translated.load_raw(index)
        assert np.abs(fake.astype(int) - (255 - image.astype(int))).max() <= 1
        np.testing.assert_array_equal(fake_labels, labels)


def test_each_stage_starts_from_the_checkpoint_before_it(scenes, tmp_path):
    """With the feature gate shut (never open), the feature stage changes nothing: its f_T
    is the target stage's, tensor for tensor; the target stage's is not the source's."""
    config = resolve_seg_config(
        "quick",
        sets=[*TINY_SEG, "feature.gate_threshold=1.0", "feature.iterations=4"],
        overrides={"data": {"data_root": str(scenes)}},
    )
    run_seg(config, tmp_path, quiet=True)
    checkpoints = tmp_path / "checkpoints"
    feature = load_file(str(checkpoints / "feature.safetensors"))
    target = load_file(str(checkpoints / "target.safetensors"))
    source = load_file(str(checkpoints / "source.safetensors"))
    shared = [name for name in feature if name in target]
    assert shared and all(torch.equal(feature[name], target[name]) for name in shared)
    weights = [
        n for n in shared if n.endswith("weight") and n.replace("task_tgt", "task_src") in source
    ]
    assert any(
        not torch.equal(target[n], source[n.replace("task_tgt", "task_src")]) for n in weights
    )
