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
    # the run's config.yaml is the config that ran: given back, it finds every stage finished
    config_file = out / "run" / "config.yaml"
    assert f"data_root: {out / 'data'}" in config_file.read_text()
    log_before = (out / "run" / "log.txt").read_text().count("finished output found")
    again = cycada("train", "seg", "--config", str(config_file), "--out", str(out / "run"))
    assert again.returncode == 0, again.stderr[-2000:]
    log = (out / "run" / "log.txt").read_text()
    assert log.count("finished output found") == log_before + 5
