"""segment-video and translate-dir end to end against the real tritonserver on loopback."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from cycada.serving.server import ServerOptions, TritonServer
from cycada.training.segmentation.scene_writer import write_scene_dataset
from tests.helpers import (
    cycada,
    data_path,
    frame_count,
    one_line_error,
    served_copy,
    skip_without_tritonserver,
)

pytestmark = [pytest.mark.slow, pytest.mark.server]

skip_without_tritonserver()


@pytest.fixture(scope="module")
def repository(tmp_path_factory, exported_repository):
    """The session's export of seeded random weights (Fast-SCNN + two generators), copied."""
    return served_copy(exported_repository, tmp_path_factory.mktemp("commands"))


def start(repo) -> TritonServer:
    # no polling: these servers serve what is there (updates are test_updates_and_replicas')
    return TritonServer(ServerOptions.on_free_ports(repo, poll_seconds=0)).start()


@pytest.fixture(scope="module")
def server(repository):
    running = start(repository)
    yield running
    running.stop()


@pytest.mark.data
@pytest.mark.parametrize(
    "clip,encoded", [("highway_day_960x540.mp4", False), ("highway_day_1280x720.mp4", True)]
)
def test_real_clip_every_frame_once_in_order(server, repository, tmp_path, clip, encoded):
    source = data_path("videos", clip)
    out, labels, shares = tmp_path / "out.mp4", tmp_path / "labels", tmp_path / "shares.csv"
    args = [
        "segment-video",
        str(source),
        "--out",
        str(out),
        "--url",
        server.grpc_url,
        "--width",
        "256",
        "--labels-dir",
        str(labels),
        "--csv",
        str(shares),
        "--quiet",
    ]
    done = cycada(*args, *(["--encoded", "--json"] if encoded else []))
    assert done.returncode == 0, done.stderr
    total = frame_count(source)
    assert frame_count(out) == total
    if encoded:  # the closing summary for scripts: one JSON object on stdout
        summary = json.loads(done.stdout)
        assert summary["frames_written"] == summary["frames_read"] == total
        assert summary["fps"] > 0 and summary["p99_ms"] >= summary["p50_ms"] > 0
    rows = list(csv.reader(shares.open()))[1:]
    assert [int(row[0]) for row in rows] == list(range(total))
    assert {row[1] for row in rows} == {"1"}  # the version that answered
    assert abs(sum(float(v) for v in rows[0][2:]) - 1.0) < 1e-3
    assert f"{total} frames written" in done.stderr  # the summary, a log line
    if encoded:
        return
    # the label map of frame k is the model's answer for frame k (order kept)
    session = ort.InferenceSession(str(repository / "segment" / "1" / "model.onnx"))
    capture = cv2.VideoCapture(str(source))
    for index in range(total):
        ok, frame = capture.read()
        if index not in (0, total // 2, total - 1):
            continue
        height, width = frame.shape[:2]
        small = cv2.resize(
            frame, (256, round(height * 256 / width)), interpolation=cv2.INTER_LINEAR
        )
        rgb = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
        expected = session.run(None, {"images": rgb[None]})[0][0]
        expected = cv2.resize(expected, (width, height), interpolation=cv2.INTER_NEAREST)
        written = cv2.imread(str(labels / f"{index:06d}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(written, expected)


def test_translated_frame_beside(server, tmp_path):
    from cycada.training.segmentation.scene_writer import write_clip

    clip = tmp_path / "clip.mp4"
    write_clip(clip, 12, 160, 96, seed=3)
    out = tmp_path / "out.mp4"
    done = cycada(
        "segment-video",
        str(clip),
        "--out",
        str(out),
        "--url",
        server.grpc_url,
        "--width",
        "160",
        "--translated",
        "translate_t2s",
        "--quiet",
    )
    assert done.returncode == 0, done.stderr
    capture = cv2.VideoCapture(str(out))
    assert capture.get(cv2.CAP_PROP_FRAME_WIDTH) == 2 * 160
    assert frame_count(out) == 12


def test_unreadable_video_is_a_one_line_error(server, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_text("not a video")
    done = cycada(
        "segment-video", str(bad), "--out", str(tmp_path / "o.mp4"), "--url", server.grpc_url
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "cannot open video" in done.stderr
    assert not (tmp_path / "o.mp4").exists()


def test_a_model_of_the_wrong_kind_is_one_line_and_leaves_nothing_beside_the_output(
    server, tmp_path
):
    """A translator given where a segmenter is needed (and the other way round) is named with
    what it returns; neither a failed connection nor a refused first request leaves the
    hidden parts folder or progress record of a resumable output behind."""
    from cycada.training.segmentation.scene_writer import write_clip

    clip = write_clip(tmp_path / "clip.mp4", 8, 96, 64, seed=1)
    out = tmp_path / "out" / "o.mp4"
    video = ["segment-video", str(clip), "--out", str(out), "--quiet"]
    done = cycada(*video, "--url", server.grpc_url, "--model", "translate_s2t")
    one_line_error(done, "--model translate_s2t: the model returns translated, not labels")
    done = cycada(*video, "--url", server.grpc_url, "--translated", "segment")
    one_line_error(done, "--translated segment: the model returns confidence, labels, not trans")
    done = cycada(*video, "--url", "127.0.0.1:1", "--timeout", "1")
    assert done.returncode == 1 and "no server is ready" in done.stderr
    assert list(out.parent.iterdir()) == []
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.zeros((64, 96, 3), np.uint8))
    done = cycada("translate-dir", str(tmp_path / "images"), str(tmp_path / "translated"),
                  "--url", server.grpc_url, "--model", "segment")  # fmt: skip
    one_line_error(done, "--model segment: the model returns confidence, labels, not translated")


def video_until(tmp_path, url, frames_done: int, extra=()) -> tuple[subprocess.Popen, Path, Path]:
    """Start segment-video on a 400-frame clip; return once ``frames_done`` labels exist."""
    from cycada.training.segmentation.scene_writer import write_clip

    clip = write_clip(tmp_path / "clip.mp4", 400, 320, 192, seed=5)
    out, labels = tmp_path / "out.mp4", tmp_path / "labels"
    command = [
        sys.executable,
        "-m",
        "cycada.cli",
        "segment-video",
        str(clip),
        "--out",
        str(out),
        "--url",
        url,
        "--width",
        "320",
        "--labels-dir",
        str(labels),
        "--quiet",
        *extra,
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a test run started in the background inherits SIGINT ignored, and Python then installs
        # no KeyboardInterrupt handler: give the command the default, as a terminal would
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(labels.glob("*.png"))) < frames_done:
        time.sleep(0.2)
    return process, out, labels


def test_server_killed_mid_video_leaves_a_playable_partial_output(repository, tmp_path):
    own = start(repository)
    process = None
    try:
        process, out, _ = video_until(
            tmp_path, own.grpc_url, 10, ["--window", "2", "--retry-window", "3"]
        )
        own.stop()  # the server goes away mid-video
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process is not None and process.poll() is None:
            process.kill()
        own.stop()
    assert process.returncode == 1, stderr  # a failure, not bad input
    assert "failed after" in stderr
    written = frame_count(out)
    assert 10 <= written < 400
    assert f"{written} frames written" in stderr  # the summary, logged on the way out


def test_interrupt_while_the_server_is_down_ends_at_once_with_a_playable_output(
    repository, tmp_path
):
    own = start(repository)
    process = None
    try:
        process, out, _ = video_until(
            tmp_path, own.grpc_url, 10, ["--window", "2", "--retry-window", "120"]
        )
        own.stop()  # requests now wait out the lost server for up to two minutes
        time.sleep(1.0)
        process.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        _, stderr = process.communicate(timeout=60)
        waited = time.monotonic() - interrupted
    finally:
        if process is not None and process.poll() is None:
            process.kill()
        own.stop()
    assert process.returncode == 130, stderr
    assert waited < 15, f"Ctrl-C took {waited:.0f} s to end segment-video"
    assert 10 <= frame_count(out) < 400 and "interrupted" in stderr


def test_interrupt_keeps_a_playable_partial_output(server, tmp_path):
    process, out, _ = video_until(tmp_path, server.grpc_url, 5)
    try:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130
    assert 5 <= frame_count(out) < 400 and "interrupted" in stderr


def test_resume_continues_a_partial_output_with_the_labels_of_an_uninterrupted_run(
    server, tmp_path
):
    shares = tmp_path / "shares.csv"
    process, out, labels = video_until(tmp_path, server.grpc_url, 20, ["--csv", str(shares)])
    try:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130
    partial = frame_count(out)
    assert 20 <= partial < 400
    clip = tmp_path / "clip.mp4"
    common = ["--url", server.grpc_url, "--width", "320", "--quiet"]
    resumed = cycada(
        "segment-video", str(clip), "--out", str(out), "--labels-dir", str(labels),
        "--csv", str(shares), "--resume", *common,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after frame {partial - 1} ({partial} frames kept)" in resumed.stderr
    assert frame_count(out) == 400
    rows = list(csv.reader(shares.open()))
    assert rows[0][0] == "frame" and [int(r[0]) for r in rows[1:]] == list(range(400))
    plain = tmp_path / "plain"
    done = cycada(
        "segment-video", str(clip), "--out", str(tmp_path / "plain.mp4"),
        "--labels-dir", str(plain), *common,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in plain.glob("*.png"))
    assert names == sorted(p.name for p in labels.glob("*.png")) and len(names) == 400
    for name in names:
        np.testing.assert_array_equal(
            cv2.imread(str(labels / name), cv2.IMREAD_UNCHANGED),
            cv2.imread(str(plain / name), cv2.IMREAD_UNCHANGED),
        )


def test_translate_dir_nested_resumable_sharded(server, tmp_path):
    src = tmp_path / "synth"
    write_scene_dataset(src, 6, "game", "gta5", 96, 64)
    for folder in ("images", "labels"):
        (src / folder / "city").mkdir()
        for name in ("00001.png", "00002.png"):
            (src / folder / name).rename(src / folder / "city" / name)
    (src / "images" / "README.txt").write_text("not an image")
    dst = tmp_path / "real"
    args = [
        "translate-dir",
        str(src / "images"),
        str(dst),
        "--labels",
        str(src / "labels"),
        "--url",
        server.grpc_url,
        "--quiet",
    ]
    done = cycada(*args)
    assert done.returncode == 0, done.stderr
    assert "6 translated" in done.stdout and "1 non-image files skipped" in done.stdout
    assert "README.txt" in done.stdout
    images = sorted(p.relative_to(dst / "images") for p in (dst / "images").rglob("*.png"))
    labels = sorted(p.relative_to(dst / "labels") for p in (dst / "labels").rglob("*.png"))
    assert images == labels and len(images) == 6 and (dst / "images" / "city").is_dir()
    (dst / "images" / "city" / "00001.png").unlink()
    again = cycada(*args, "--json")
    summary = json.loads(again.stdout)  # the closing summary for scripts
    assert summary["translated"] == 1 and summary["skipped_done"] == 5
    assert summary["non_images"] == ["README.txt"] and summary["failed"] == []
    shards = tmp_path / "sharded"
    for index in range(2):
        cycada(
            "translate-dir",
            str(src / "images"),
            str(shards),
            "--url",
            server.grpc_url,
            "--shard",
            f"{index}/2",
            "--quiet",
        )
    assert len(list((shards / "images").rglob("*.png"))) == 6
    bad = cycada("translate-dir", str(src / "images"), str(shards), "--shard", "2/2")
    assert bad.returncode == 2 and "--shard" in bad.stderr


def test_a_failing_writer_stops_the_video_at_once(server, tmp_path, monkeypatch, caplog):
    """A disk that fills up after 5 frames: reported then, not after the whole video is sent."""
    from cycada.clients import video as video_module
    from cycada.errors import OutputError
    from cycada.training.segmentation.scene_writer import write_clip

    clip = write_clip(tmp_path / "long.mp4", 300, 128, 64, seed=3)
    original = video_module._Writer._encode

    def disk_full(self, index, version, overlay, shares):
        if self.written >= 5:
            raise OSError(28, "No space left on device")
        original(self, index, version, overlay, shares)

    monkeypatch.setattr(video_module._Writer, "_encode", disk_full)
    options = video_module.VideoOptions(urls=[server.grpc_url], width=128, progress=False)
    caplog.set_level(logging.INFO, logger="cycada")
    with pytest.raises(OutputError, match="No space left on device"):
        video_module.segment_video(str(clip), tmp_path / "out.mp4", options)
    assert frame_count(tmp_path / "out.mp4") == 5  # what was written stays playable
    line = caplog.text
    read = int(line.split(" read,")[0].rsplit("(", 1)[1])
    assert read < 100 and "stopped: cannot write" in line  # not the whole video sent first


class _SixFrames:  # a capture of frames 0-5, frame 2 undecodable
    position = -1

    def grab(self):
        self.position += 1
        return self.position < 6

    def retrieve(self):
        if self.position == 2:
            return False, None
        return True, np.full((4, 4, 3), self.position, np.uint8)


def test_corrupt_frames_keep_the_source_frame_numbers():
    """A frame that does not decode is skipped; the frames after it keep their numbers."""
    import queue as queue_module
    import threading

    from cycada.clients.video import _END, _read_frames

    Capture = _SixFrames
    out: queue_module.Queue = queue_module.Queue()
    counts = {"read": 0, "corrupt": 0}
    _read_frames(Capture(), out, threading.Event(), counts)
    items = []
    while (item := out.get()) is not _END:
        items.append(item)
    assert [index for index, _ in items] == [0, 1, 3, 4, 5]
    assert all(int(frame[0, 0, 0]) == index for index, frame in items)
    assert counts == {"read": 5, "corrupt": 1}


def test_realtime_reads_a_file_at_its_frame_rate():
    """--realtime: frame n is read n / fps seconds after the first, as a camera delivers it."""
    import queue as queue_module
    import threading
    import time

    from cycada.clients.video import _END, _read_frames

    out: queue_module.Queue = queue_module.Queue()
    started = time.perf_counter()
    _read_frames(_SixFrames(), out, threading.Event(), {"read": 0, "corrupt": 0}, 0, 20.0)
    seconds = time.perf_counter() - started
    frames = []
    while (item := out.get()) is not _END:
        frames.append(item[0])
    assert frames == [0, 1, 3, 4, 5]
    assert 0.25 - 0.01 <= seconds < 1.0  # frame 5 at 5 / 20 s


def test_bench_against_a_url_without_a_repository_says_how_to_measure_the_server_alone(tmp_path):
    done = cycada("bench", "--url", "127.0.0.1:1", "--repository", str(tmp_path), timeout=60)
    one_line_error(done, "no exported version to run in process", "--no-in-process")


def test_bench_of_a_server_that_is_not_there_or_a_model_it_lacks_is_one_line(server, tmp_path):
    """Both ended in tritonclient's traceback: no server after the retry window (exit 1, a
    server fault), a model the server does not serve (waiting cannot help)."""
    bench = ["bench", "--no-in-process", "--seconds", "1", "--concurrency", "1"]
    bench += ["--retry-window", "1", "--out", str(tmp_path)]
    for url, model, message in [
        ("127.0.0.1:1", "segment", "no Triton server answers at 127.0.0.1:1 after 1 s"),
        (server.grpc_url, "nope", f"{server.grpc_url}: cannot read the statistics of 'nope'"),
    ]:
        done = cycada(*bench, "--url", url, "--model", model, timeout=120)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert done.stderr.strip().splitlines()[-1].startswith(f"cycada: error: {message}")


def test_translate_dir_lists_a_refused_image_and_goes_on(server, tmp_path):
    from cycada.clients.translate_dir import translate_dir

    src = tmp_path / "synth"
    write_scene_dataset(src, 3, "game", "gta5", 96, 64)
    huge = src / "images" / "00001_huge.png"  # over the server's 4096x4096 pixel limit
    cv2.imwrite(str(huge), np.zeros((4200, 4200, 3), np.uint8))
    for attempt in range(2):
        summary = translate_dir(
            src / "images", tmp_path / "real", [server.grpc_url], progress=False
        )
        assert len(summary.failed) == 1 and summary.failed[0].startswith("00001_huge.png: ")
        assert "pixels" in summary.failed[0]
        assert summary.translated + summary.skipped_done == 3
        assert summary.translated == (3 if attempt == 0 else 0)  # a rerun goes past it again
    assert not (tmp_path / "real" / "images" / "00001_huge.png").exists()


def test_soak_six_seconds_no_errors_memory_sampled(repository, tmp_path):
    """The soak command's short form (`cycada bench soak` over minutes is RELIABILITY.md's
    figure): every request answered, memory sampled each second, windows reported."""
    from cycada.benchmarks.soak import main as soak_main

    soak_main(
        [
            "--repository", str(repository), "--minutes", "0.1", "--warmup", "2",
            "--window", "2", "--concurrency", "4", "--size", "128x64", "--out", str(tmp_path),
        ]
    )  # fmt: skip
    result = json.loads((tmp_path / "soak.json").read_text())
    assert result["requests"] > 20 and result["errors"] == 0
    assert len(result["per_second"]) >= 5 and len(result["windows"]) >= 2
    assert result["rss_after_warmup_mb"] > 100  # server and stubs, sampled every second
    assert abs(result["rss_growth"]) < 0.25  # a leak of this size would show in seconds
    assert "| window (s) | requests/s |" in (tmp_path / "soak.md").read_text()


def test_translate_dir_full_disk_keeps_what_was_written(server, tmp_path, monkeypatch):
    from cycada.atomic import atomic_path
    from cycada.clients import translate_dir as module
    from cycada.errors import DataError

    src = tmp_path / "synth"
    write_scene_dataset(src, 5, "game", "gta5", 64, 32)
    uses = []

    def filling_up(path):
        uses.append(path)
        if len(uses) > 2:
            raise OSError(28, "No space left on device")
        return atomic_path(path)

    monkeypatch.setattr(module, "atomic_path", filling_up)
    dst = tmp_path / "real"
    with pytest.raises(DataError, match="No space left on device; the 2 images translated"):
        module.translate_dir(src / "images", dst, [server.grpc_url], progress=False)
    written = sorted(dst.rglob("*"))
    assert [p.name for p in written if p.is_file()] == ["00001.png", "00002.png"]
    assert all(cv2.imread(str(p)) is not None for p in written if p.is_file())
    monkeypatch.undo()
    summary = module.translate_dir(src / "images", dst, [server.grpc_url], progress=False)
    assert summary.skipped_done == 2 and summary.translated == 3


def test_bench_schema_and_sanity(server, repository, tmp_path):
    from cycada.clients.bench import PERF_ANALYZER_COLUMNS, run_bench

    result = run_bench(
        repository, "segment", server.grpc_url, (128, 64), [1, 2], [4.0], 1.0, 0.5, tmp_path
    )
    assert [r["mode"] for r in result["served"]] == ["concurrency", "concurrency", "rate"]
    for row in result["served"]:
        assert row["throughput_per_s"] > 0 and row["errors"] == 0
        assert row["p50_ms"] <= row["p90_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["server_compute_infer_us"] > 0
    engines = [row["engine"] for row in result["in_process"]]
    assert any(name.startswith("onnxruntime") for name in engines)
    assert all(row["throughput_per_s"] > 0 for row in result["in_process"])
    header, *rows = (tmp_path / "bench.csv").read_text().splitlines()
    assert header.split(",") == PERF_ANALYZER_COLUMNS and len(rows) == 2  # concurrency 1, 2
    assert (
        rows[0].split(",")[2] == "" and rows[0].split(",")[8] == ""
    )  # client send/recv unmeasured
    rate_header, rate_row = (tmp_path / "bench_rate.csv").read_text().splitlines()
    assert rate_header.split(",")[0] == "Request Rate" and rate_row.startswith("4.0,")
    # an open loop's throughput is what completed in the window, never above the offered rate
    assert result["served"][2]["throughput_per_s"] <= 4.0 + 1e-9
    assert "header" in json.loads((tmp_path / "bench.json").read_text())
    assert "| concurrency 1 |" in (tmp_path / "bench.md").read_text()
    assert cv2.imread(str(tmp_path / "bench.png")) is not None


def test_bench_video_compares_the_video_with_the_served_throughput(repository, tmp_path):
    from cycada.benchmarks.video import main as bench_video
    from cycada.training.segmentation.scene_writer import write_clip

    clip = tmp_path / "clip.mp4"
    write_clip(clip, 16, 160, 96, seed=4)
    cpu = str(min(os.sched_getaffinity(0)))
    args = ["--repository", str(repository), "--clip", str(clip), "--width", "160"]
    args += ["--window", "2", "--seconds", "1", "--server-cpus", cpu, "--out", str(tmp_path)]
    assert bench_video([*args, "--interference"]) == 0  # no --client-cpus: pytest stays unpinned
    result = json.loads((tmp_path / "video_vs_served.json").read_text())
    assert result["frames"] == 16 and result["model"] == "segment_encoded"
    assert result["served_throughput"] > 0 and result["served_with_codec_loop"] > 0
    assert result["ratio"] == pytest.approx(result["video_fps"] / result["served_throughput"], 0.01)
    assert frame_count(tmp_path / "video.mp4") == 16


def test_bench_streams_runs_live_streams_at_their_camera_rate_every_frame_in_order(
    server, tmp_path
):
    """`cycada bench streams`: two `segment-video --realtime` processes at once against a
    running server; each keeps its 10 fps camera's pace and writes every frame once, in order."""
    from cycada.benchmarks.streams import main as bench_streams

    args = ["--url", server.grpc_url, "--streams", "2", "--fps", "10", "--frames", "12"]
    assert bench_streams([*args, "--size", "128x64", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "streams.json").read_text())
    assert result["every_frame_in_order"] and len(result["rows"]) == 2
    for row in result["rows"]:
        assert row["frames"] == 12
        assert 6.0 <= row["fps"] <= 11.5  # paced: 12 frames over at least 1.1 s, never faster
    assert frame_count(tmp_path / "stream1.mp4") == 12


def test_client_checks_metadata_before_sending(server):
    from cycada.clients.triton_client import ModelClient
    from cycada.errors import ConfigError, DataError

    with ModelClient(server.grpc_url, "segment") as client:
        assert client.inputs["images"].datatype == "UINT8"
        assert client.inputs["images"].shape == (-1, -1, -1, 3)
        with pytest.raises(DataError, match="must be UINT8, got float32"):
            client.check({"images": np.zeros((1, 8, 8, 3), np.float32)})
        with pytest.raises(DataError, match=r"must have shape \[-1, -1, -1, 3\]"):
            client.check({"images": np.zeros((1, 8, 8, 4), np.uint8)})
        with pytest.raises(DataError, match="takes inputs"):
            client.check({"frames": np.zeros((1, 8), np.uint8)})
        with pytest.raises(DataError, match="over the model's max_batch_size"):
            client.check({"images": np.zeros((9, 8, 8, 3), np.uint8)})
    # a model the server does not serve is the caller's mistake (exit 2), reported at once
    with pytest.raises(ConfigError, match="--model nope: the server serves no such model"):
        ModelClient(server.grpc_url, "nope", timeout=30)


def test_shared_memory_regions_grow_once_and_survive_a_server_restart(repository):
    from cycada.clients.triton_client import ModelClient

    options = ServerOptions.on_free_ports(repository, poll_seconds=0)
    small = np.zeros((1, 32, 32, 3), np.uint8)
    large = np.zeros((1, 64, 96, 3), np.uint8)
    running = TritonServer(options).start()
    try:
        client = ModelClient(running.grpc_url, "segment", shared_memory=True, retry_window=60)
        assert client.infer({"images": small}, ["labels"])["labels"].shape == (1, 32, 32)
        assert client.infer({"images": large}, ["labels"])["labels"].shape == (1, 64, 96)
        assert len(client.regions) == 1  # the outgrown region is gone from the list
        running.stop()
        running = TritonServer(options).start()  # same ports; it knows no regions
        assert client.infer({"images": large}, ["labels"])["labels"].shape == (1, 64, 96)
        client.close()  # destroys each region once: no error
    finally:
        running.stop()
    assert not [p for p in os.listdir("/dev/shm") if p.startswith(f"cycada_{os.getpid()}_")]


def test_shared_memory_compression_and_round_robin_give_the_same_labels(server, repository):
    from cycada.clients.triton_client import ModelClient

    image = np.random.default_rng(0).integers(0, 256, (1, 48, 80, 3), np.uint8)
    with ModelClient(server.grpc_url, "segment") as plain:
        expected = plain.infer({"images": image}, ["labels"])["labels"]
    with ModelClient(server.grpc_url, "segment", shared_memory=True) as shm:
        for _ in range(3):
            np.testing.assert_array_equal(
                shm.infer({"images": image}, ["labels"])["labels"], expected
            )
    with ModelClient(server.grpc_url, "segment", compression="gzip") as gzip:
        np.testing.assert_array_equal(gzip.infer({"images": image}, ["labels"])["labels"], expected)
    second = start(repository)
    try:
        import tritonclient.grpc as grpcclient

        def successes(url):
            stats = grpcclient.InferenceServerClient(url).get_inference_statistics(
                "segment", as_json=True
            )
            return sum(
                int(v["inference_stats"]["success"].get("count", 0)) for v in stats["model_stats"]
            )

        before = [successes(server.grpc_url), successes(second.grpc_url)]
        with ModelClient([server.grpc_url, second.grpc_url], "segment") as both:
            results = list(both.map_ordered(range(6), lambda _: {"images": image}, ["labels"], 3))
        assert [index for index, _ in results] == list(range(6))
        after = [successes(server.grpc_url), successes(second.grpc_url)]
        assert after[0] - before[0] == 3 and after[1] - before[1] == 3
    finally:
        second.stop()


def test_overlay_colours_and_class_counts_match_the_plain_numpy_definitions():
    from cycada.clients.video import class_counts, palette_lut
    from cycada.training.segmentation.label_spaces import LABEL_SPACES

    palette = LABEL_SPACES["cityscapes19"].palette
    labels = np.random.default_rng(0).integers(0, 256, (37, 53), np.uint8)
    expected = np.zeros((256, 3), np.uint8)
    expected[: len(palette)] = np.asarray(palette, np.uint8)[:, ::-1]
    colours = cv2.applyColorMap(labels, palette_lut(palette))
    np.testing.assert_array_equal(colours, expected[labels])
    np.testing.assert_array_equal(
        class_counts(labels), np.bincount(labels.reshape(-1), minlength=256)
    )


def test_translate_dir_removes_what_a_killed_run_half_wrote(server, tmp_path):
    """kill -9 while an image is written leaves its hidden temporary; the next run removes
    those old enough to be no living writer's (a shard running beside it keeps its own)."""
    from cycada.clients.translate_dir import translate_dir

    src = tmp_path / "synth"
    write_scene_dataset(src, 2, "game", "gta5", 64, 32)
    dst = tmp_path / "real"
    (dst / "city").mkdir(parents=True)
    stale, fresh = dst / "city" / ".00000.png.x1y2.tmp", dst / ".00001.png.z3w4.tmp"
    for leftover in (stale, fresh):
        leftover.write_bytes(b"half a PNG")
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    summary = translate_dir(src / "images", dst, [server.grpc_url], progress=False)
    assert summary.failed == [] and not stale.exists() and fresh.exists()
