"""`cycada demo --smoke`: every step of the main job on the embedded default (the real
tritonserver, a tiny training, the export, the clients); its config.yaml repeats the run."""

from __future__ import annotations

import json

import pytest

from tests.helpers import cycada, frame_count, skip_without_tritonserver

pytestmark = [pytest.mark.slow, pytest.mark.server]

skip_without_tritonserver()


def test_demo_smoke_runs_every_step(tmp_path):
    out = tmp_path / "demo"
    (out / "model_repository" / "segment" / "7").mkdir(parents=True)  # an earlier demo's
    done = cycada("demo", "--smoke", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (out / "model_repository" / "segment" / "7").exists()
    assert "cycada demo finished" in done.stdout
    assert frame_count(out / "segmented.mp4") == frame_count(out / "data" / "drive.mp4") > 0
    assert len(list((out / "translated" / "images").glob("*.png"))) == 12
    assert (out / "bench" / "bench.json").exists()
    assert (out / "model_repository" / "segment" / "1" / "model.onnx").exists()
    assert "[11/11] stopping the server" in done.stdout
    # the loop: the dusk clip through version 1 (collecting its unsure frames), a run adapted
    # from the same source checkpoint to them, version 2 served without a restart, both judged
    assert frame_count(out / "dusk-v1.mp4") == frame_count(out / "dusk-v2.mp4") == 40
    collected = (out / "collected" / "collected.csv").read_text().splitlines()
    assert len(collected) > 2 and all(row.endswith(",1") for row in collected[1:])
    source = out / "run-dusk" / "checkpoints" / "source.safetensors"
    assert source.read_bytes() == (out / "run" / "checkpoints" / "source.safetensors").read_bytes()
    assert "source: finished output found" in (out / "run-dusk" / "log.txt").read_text()
    adapted = json.loads((out / "run-dusk" / "metrics.json").read_text())
    shipped = json.loads((out / "model_repository" / "segment" / "2" / "endpoint.json").read_text())
    assert shipped["stage"] == adapted["verdict"]["stage"] and shipped["baseline"]["frames"] >= 1
    assert "version 2 served without a restart" in done.stdout
    assert "restart" not in (out / "tritonserver.log").read_text().lower()
    table = done.stdout[done.stdout.index("on the dusk clip") :]
    for row in ("frames judged", "mean confidence", "shift flagged", "mIoU on labelled dusk"):
        assert row in table
    for version in ("1", "2"):  # each version judged on the clip's 40 frames, against its baseline
        assert f"segment_encoded          {version}      40  " in done.stdout
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
