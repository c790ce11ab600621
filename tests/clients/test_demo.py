"""`cycada demo --smoke`: every step of the main job on the embedded default (the real
tritonserver, a tiny training, the export, the clients); its config.yaml repeats the run."""

from __future__ import annotations

import pytest

from tests.helpers import cycada, frame_count, skip_without_tritonserver

pytestmark = [pytest.mark.slow, pytest.mark.server]

skip_without_tritonserver()


def test_demo_smoke_runs_every_step(tmp_path):
    done = cycada("demo", "--smoke", "--out", str(tmp_path / "demo"))
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "demo"
    assert "cycada demo finished" in done.stdout
    assert frame_count(out / "segmented.mp4") == frame_count(out / "data" / "drive.mp4") > 0
    assert len(list((out / "translated" / "images").glob("*.png"))) == 12
    assert (out / "bench" / "bench.json").exists()
    assert (out / "model_repository" / "segment" / "1" / "model.onnx").exists()
    assert "[8/8] stopping the server" in done.stdout
    # whether the feature stage moved f_T is said, in the output and the run's log
    feature_line = next(line for line in done.stdout.splitlines() if "  feature: " in line)
    assert "(f_T updated on" in feature_line or "(f_T not updated" in feature_line
    assert "feature: f_T updated on" in (out / "run" / "log.txt").read_text()
    # the run's config.yaml is the config that ran: given back, it finds every stage finished
    config_file = out / "run" / "config.yaml"
    assert f"data_root: {out / 'data'}" in config_file.read_text()
    log_before = (out / "run" / "log.txt").read_text().count("finished output found")
    again = cycada("train", "seg", "--config", str(config_file), "--out", str(out / "run"))
    assert again.returncode == 0, again.stderr[-2000:]
    log = (out / "run" / "log.txt").read_text()
    assert log.count("finished output found") == log_before + 5


def test_stage_lines_say_whether_the_feature_stage_moved_f_t():
    from cycada.clients.demo import stage_lines

    labelled = {"miou": 0.2, "dataset": "cityscapes/val"}
    metrics = {
        "stages": {
            "target": {"target": labelled},
            "feature": {"target": labelled, "generator_updates": 0},
        }
    }
    target, feature = stage_lines(metrics)
    assert target == "target: mIoU 20.0% on cityscapes/val"
    assert feature.startswith("feature: mIoU 20.0%") and "f_T not updated" in feature
    metrics["stages"]["feature"]["generator_updates"] = 35
    assert stage_lines(metrics)[1].endswith("(f_T updated on 35 iterations)")
