"""segment-video under faults that hit its output: a kill -9 (durable parts, resume), a file
it cannot write, a model of other classes. Apart from test_commands so that the two test
workers share the end-to-end video runs."""

from __future__ import annotations

import contextlib
import csv
import json
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from cycada.serving.server import ServerOptions, TritonServer
from tests.helpers import cycada, frame_count, served_copy, skip_without_tritonserver

pytestmark = [pytest.mark.slow, pytest.mark.server]

skip_without_tritonserver()


@pytest.fixture(scope="module")
def server(tmp_path_factory, exported_repository):
    repository = served_copy(exported_repository, tmp_path_factory.mktemp("video_faults"))
    with TritonServer(ServerOptions.on_free_ports(repository, models=["segment"])) as running:
        yield running


@pytest.mark.parametrize("width,limit", [(128, 12_000), (320, 60_000)])
def test_a_video_the_encoder_cannot_write_fails_the_command_with_one_line(
    server, tmp_path, width, limit
):
    """A real write failure: a file size limit (RLIMIT_FSIZE) that the MP4 outgrows, at the
    index written on release (small frames, buffered) or mid-video (OpenCV's write returns
    False). The command fails, exit 1, one line; no unplayable file is left as the output."""
    import resource

    from cycada.training.segmentation.scene_writer import write_clip

    clip = write_clip(tmp_path / "long.mp4", 120, width, width // 2, seed=3)

    def file_size_limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    out = tmp_path / "out.mp4"
    done = subprocess.run(
        [sys.executable, "-m", "cycada.cli", "segment-video", str(clip), "--out", str(out),
         "--url", server.grpc_url, "--width", str(width), "--quiet"],
        capture_output=True, text=True, timeout=300, preexec_fn=file_size_limit,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("cycada: error: cannot write video"), last
    assert not out.exists() or frame_count(out) > 0


def test_the_overlay_and_csv_follow_the_served_models_classes(tmp_path):
    """A segmenter of SYNTHIA's 13 classes: segment-video names, colours and counts its 13
    classes (CSV columns, legend), read from the served model's config, not Cityscapes' 19."""
    from cycada.benchmarks.served import random_run
    from cycada.export.exporter import ExportOptions, export_run
    from cycada.training.segmentation.label_spaces import SYNTHIA13
    from cycada.training.segmentation.scene_writer import write_clip

    run = random_run("fastscnn", tmp_path / "run", label_space="synthia13")
    repository = tmp_path / "repository"
    export_run(run, repository, ExportOptions(fp16=False), log=lambda _: None)
    clip = write_clip(tmp_path / "clip.mp4", 6, 96, 48)
    shares = tmp_path / "shares.csv"
    with TritonServer(ServerOptions.on_free_ports(repository, models=["segment"])) as server:
        done = cycada(
            "segment-video", str(clip), "--out", str(tmp_path / "out.mp4"), "--url",
            server.grpc_url, "--width", "96", "--csv", str(shares), "--quiet",
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    header, *rows = list(csv.reader(shares.open()))
    assert header == ["frame", "model_version", *SYNTHIA13.classes]
    assert len(rows) == 6 and all(len(row) == 2 + 13 for row in rows)
    assert all(abs(sum(float(v) for v in row[2:]) - 1.0) < 1e-3 for row in rows)


def test_segment_video_killed_with_9_resumes_from_its_last_durable_frame(server, tmp_path):
    """kill -9 of segment-video (a live-paced clip) twice, Ctrl-C once, each time resumed:
    every frame once, in order, in the CSV, label images and MP4, with the labels of an
    uninterrupted run; a resumed run killed again leaves the output before it as it was; a
    resume with other options is refused."""
    from cycada.training.segmentation.scene_writer import write_clip

    clip = write_clip(tmp_path / "clip.mp4", 300, 96, 48, fps=25.0, seed=8)
    out, labels, shares = tmp_path / "out.mp4", tmp_path / "labels", tmp_path / "shares.csv"
    record = tmp_path / ".out.progress.json"
    common = ["segment-video", str(clip), "--out", str(out), "--url", server.grpc_url,
              "--width", "96", "--labels-dir", str(labels), "--csv", str(shares),
              "--quiet"]  # fmt: skip

    def durable() -> int:
        with contextlib.suppress(OSError, ValueError):
            return json.loads(record.read_text())["frames_written"]
        return 0

    def run_until_durable(more_than: int, *extra: str) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-m", "cycada.cli", *common, "--realtime", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while durable() <= more_than:
            assert process.poll() is None and time.monotonic() < deadline, "nothing sealed"
            time.sleep(0.05)
        time.sleep(1.0)  # and some frames of the next part, which the kill loses
        return process

    first = run_until_durable(0)
    first.kill()
    first.wait()
    assert not out.exists()  # nothing joined: the parts and the record hold the work
    second = run_until_durable(durable(), "--resume")
    second.send_signal(signal.SIGINT)  # a graceful stop: the parts are joined into OUT
    second.communicate(timeout=60)
    assert second.returncode == 130
    joined = frame_count(out)
    assert joined == durable() > 0
    third = run_until_durable(durable(), "--resume")
    third.kill()
    third.wait()
    assert frame_count(out) == joined  # the killed resume left the output before it
    finished = subprocess.run(
        [sys.executable, "-m", "cycada.cli", *common, "--resume"], capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr
    assert f"resuming after frame {durable_before(finished.stderr)}" in finished.stderr
    rows = list(csv.reader(shares.open()))
    assert [int(row[0]) for row in rows[1:]] == list(range(300))  # once, in order
    assert frame_count(out) == 300 and len(list(labels.glob("*.png"))) == 300
    assert not (tmp_path / ".out.parts").exists()
    plain = tmp_path / "plain"
    done = cycada(
        "segment-video", str(clip), "--out", str(tmp_path / "plain.mp4"), "--url",
        server.grpc_url, "--width", "96", "--labels-dir", str(plain), "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for png in sorted(plain.glob("*.png")):
        np.testing.assert_array_equal(
            cv2.imread(str(labels / png.name), cv2.IMREAD_UNCHANGED),
            cv2.imread(str(png), cv2.IMREAD_UNCHANGED),
        )
    other = ["128" if word == "96" else word for word in common]  # --width 128
    refused = cycada(*other, "--resume")
    assert refused.returncode == 2 and "width 96 (now 128)" in refused.stderr


def durable_before(log: str) -> str:
    """The frame a resumed run says it resumes after (from its log line)."""
    return log.split("resuming after frame ", 1)[1].split(" ", 1)[0]
