"""`cycada demo --smoke --video CLIP`: the main job adapting to the user's own footage (the
clip's frames are the unlabelled target), and a missing clip refused before anything runs.

Apart from test_demo.py so that pytest-xdist runs the two demos on different workers."""

from __future__ import annotations

import json

import pytest

from tests.helpers import cycada, frame_count, skip_without_tritonserver

pytestmark = [pytest.mark.slow, pytest.mark.server]

skip_without_tritonserver()


def test_demo_smoke_adapts_to_the_given_video(tmp_path):
    from cycada.training.segmentation.scene_writer import write_clip

    clip = write_clip(tmp_path / "mine.mp4", 30, 320, 160, style="camera", seed=5)
    done = cycada("demo", "--smoke", "--video", str(clip), "--out", str(tmp_path / "demo"))
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "demo"
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert metrics["target"] == f"video:{clip}"  # the footage is the target domain
    assert (
        metrics["evaluation"]["labelled"] is None and metrics["final"]["evaluation"] == "label-free"
    )
    assert len((out / "run" / "target_frames" / "index.csv").read_text().splitlines()) > 8
    assert not (out / "data" / "cityscapes").exists()  # no camera-style scenes needed
    assert frame_count(out / "segmented.mp4") == 30  # the same clip, segmented by the server
    assert "label-free signals on held-out frames of" in done.stdout
    assert "source only" in done.stdout and "mean confidence" in done.stdout
    missing = cycada("demo", "--video", str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "x"))
    assert missing.returncode != 0 and "expected a video file" in missing.stderr
    assert "Traceback" not in missing.stderr and not (tmp_path / "x").exists()
