"""The label-free signals written once (cycada.signals): counting, the shift rule, the stage
verdict and which stage export takes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cycada.errors import CheckpointError
from cycada.export.run_models import choose_stage
from cycada.signals import Baseline, ShiftRule, SignalCounts, class_share_distance, judge_window
from cycada.training.core.verdict import StageEvidence, stage_verdict
from cycada.training.segmentation.pipeline import seg_verdict

CLASSES = ["road", "car", "sky", "person"]


def test_served_bytes_and_probabilities_count_the_same_signals():
    rng = np.random.default_rng(0)
    top = rng.uniform(0.2, 1.0, (2, 6, 8)).astype(np.float32)
    labels = rng.integers(0, 4, (2, 6, 8)).astype(np.uint8)
    served, trained = SignalCounts(4), SignalCounts(4)
    served.add_served(labels, np.round(top * 255).astype(np.uint8))
    for frame in range(2):
        trained.add_probabilities(labels[frame], top[frame])
    assert served.frames == trained.frames == 2 and served.pixels == trained.pixels == 96
    assert served.mean_confidence == pytest.approx(trained.mean_confidence, abs=1 / 255)
    assert served.low_pixels == trained.low_pixels  # p < 0.5 exactly when the byte is <= 127
    assert np.array_equal(served.class_pixels, trained.class_pixels)
    later = SignalCounts(4)
    later.add_served(labels, np.round(top * 255).astype(np.uint8))
    later.add_served(labels[:1], np.full((1, 6, 8), 255, np.uint8))
    window = later.minus(served)
    assert window.frames == 1 and window.mean_confidence == 1.0
    assert class_share_distance([1, 0], [0, 1]) == 1.0


def _window(frames: int, confidence: float, shares: list[float]) -> SignalCounts:
    counts = SignalCounts(4, frames, frames * 1000, confidence * frames * 1000)
    counts.class_pixels = np.array([round(s * frames * 1000) for s in shares])
    return counts


BASELINE = Baseline(0.80, 0.10, dict(zip(CLASSES, [0.5, 0.2, 0.3, 0.0])), 100)


def test_the_shift_rule_flags_each_kind_of_shift_with_its_evidence():
    same = judge_window(_window(100, 0.79, [0.5, 0.2, 0.3, 0.0]), BASELINE, CLASSES)
    assert same.flags == [] and same.share_distance == pytest.approx(0.0)
    darker = judge_window(_window(100, 0.62, [0.5, 0.2, 0.3, 0.0]), BASELINE, CLASSES)
    assert len(darker.flags) == 1 and "mean confidence 62.0% against 80.0%" in darker.flags[0]
    collapse = judge_window(_window(100, 0.8, [0.55, 0.005, 0.3, 0.145]), BASELINE, CLASSES)
    assert collapse.vanished == ["car"] and collapse.appeared == ["person"]
    assert any("class 'car' vanished" in flag for flag in collapse.flags)
    too_few = judge_window(_window(10, 0.3, [0, 0, 0, 1]), BASELINE, CLASSES, ShiftRule())
    assert too_few.flags == [] and too_few.frames == 10  # numbers shown, nothing judged


def _stage(name, confidence, car, labelled=None):
    shares = {"road": 0.5, "car": car, "sky": 0.5 - car}
    source = {"road": 0.4, "car": 0.1, "sky": 0.5}
    return StageEvidence(name, labelled, confidence, shares, source)


def test_the_verdict_ships_the_last_stage_unless_its_signals_got_worse():
    good = [
        _stage("source", 0.70, 0.10),
        _stage("target", 0.75, 0.11),
        _stage("feature", 0.78, 0.1),
    ]
    assert stage_verdict(good)["stage"] == "feature"
    # the feature stage erases cars (the collapse seen on a day-to-dusk shift): the target stage
    collapse = [*good[:2], _stage("feature", 0.80, 0.006)]
    verdict = stage_verdict(collapse)
    assert verdict["stage"] == "target" and verdict["by"] == "label-free"
    assert "class 'car' shrank from 11.0%" in verdict["rejected"]["feature"]
    # source only painted cars over half of every dark frame; the target stage's 8 % is nearer
    # the source labels' 10 %: a correction, not a collapse (seen in cycada demo at dusk)
    corrected = [_stage("source", 0.64, 0.45), _stage("target", 0.70, 0.08)]
    assert stage_verdict(corrected)["stage"] == "target"
    unsure = [*good[:2], _stage("feature", 0.66, 0.1)]
    assert "mean confidence fell from 75.0%" in stage_verdict(unsure)["reason"]
    # with labels, the best score decides, whatever the signals say
    labelled = [_stage("source", 0.7, 0.1, 0.30), _stage("target", 0.7, 0.1, 0.41)]
    labelled.append(_stage("feature", 0.9, 0.0, 0.38))
    assert stage_verdict(labelled) | {"reason": ""} == {
        "stage": "target",
        "by": "labelled",
        "reason": "",
        "rejected": {},
    }


def test_a_run_records_the_verdict_and_export_takes_its_stage(tmp_path):
    signals = {
        stage: {
            "mean_confidence": c,
            "class_shares": {"car": car},
            "source_class_shares": {"car": 0.1},
        }
        for stage, c, car in (("source", 0.7, 0.1), ("target", 0.76, 0.12), ("feature", 0.66, 0.12))
    }
    stages = {stage: {"label_free": value} for stage, value in signals.items()}
    verdict = seg_verdict(stages)
    assert verdict["stage"] == "target" and "feature" in verdict["rejected"]
    (tmp_path / "checkpoints").mkdir()
    for stage in ("source", "target", "feature"):
        (tmp_path / "checkpoints" / f"{stage}.safetensors").touch()
    assert choose_stage(tmp_path)[0] == "feature"  # no metrics.json: the latest stage
    (tmp_path / "metrics.json").write_text(json.dumps({"verdict": verdict}))
    stage, why = choose_stage(tmp_path)
    assert stage == "target" and "the run's verdict (label-free: not feature" in why
    assert choose_stage(tmp_path, "feature") == ("feature", "chosen with --stage")
    (tmp_path / "checkpoints" / "feature.safetensors").unlink()
    with pytest.raises(CheckpointError, match="--stage feature: .* no finished task model"):
        choose_stage(tmp_path, "feature")


def test_the_verdict_bench_sets_the_label_free_pick_beside_the_labels_pick(tmp_path):
    from cycada.benchmarks.drift import verdict_rows

    def entry(miou, confidence, car):
        shares = {"road": 0.6, "car": car, "sky": 0.4 - car}
        source = {"road": 0.5, "car": 0.1, "sky": 0.4}
        signals = {"mean_confidence": confidence, "class_shares": shares}
        return {"target": {"miou": miou}, "label_free": {**signals, "source_class_shares": source}}

    stages = {
        "source": entry(0.20, 0.70, 0.10),
        "target": entry(0.30, 0.75, 0.12),
        "feature": entry(0.26, 0.77, 0.01),  # erases cars: the labels and the signals agree
    }
    (tmp_path / "metrics.json").write_text(
        json.dumps({"source": "gta5", "target": "camvid", "seed": 0, "stages": stages})
    )
    (row,) = verdict_rows([tmp_path])
    assert (row["labels_pick"], row["label_free_pick"], row["agree"]) == ("target", "target", True)
    assert row["miou_lost"] == 0 and row["last_stage_lost"] == pytest.approx(0.04)
