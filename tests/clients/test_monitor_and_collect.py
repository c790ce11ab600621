"""`cycada monitor` and `segment-video --collect`: the served signals read from the real
tritonserver equal what the client computes from the same responses; the window, the bad inputs
(one line, exit 2); collecting keeps the unsure frames and survives a full disk."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from cycada import signals
from cycada.clients.collect import CollectOptions, Collector
from cycada.clients.monitor import Monitor, metrics_url, read_servers
from cycada.errors import DataError, InputError, ServingError
from cycada.serving.server import ServerOptions, TritonServer
from cycada.signals import ShiftRule
from cycada.training.segmentation.data import load_segmentation
from cycada.training.segmentation.label_spaces import CITYSCAPES19
from tests.helpers import cycada, data_path, served_copy, skip_without_tritonserver

CLIP = data_path("videos", "highway_day_960x540.mp4")


def _metrics_text(frames: int, confidence_sum: float, stub: str = "segment_0_0:7") -> str:
    labels = f'model="segment",version="1",stub="{stub}"'
    return "\n".join(
        [
            "# HELP nv_inference_count Number of inferences",
            'nv_inference_count{model="segment",version="1"} 7',
            f"{signals.FRAMES}{{{labels}}} {frames}",
            f"{signals.PIXELS}{{{labels}}} {frames * 100}",
            f"{signals.CONFIDENCE_SUM}{{{labels}}} {confidence_sum}",
            f"{signals.LOW_PIXELS}{{{labels}}} 0",
            f'{signals.CLASS_PIXELS}{{{labels},class="road"}} {frames * 60}',
            f'{signals.CLASS_PIXELS}{{{labels},class="traffic light"}} {frames * 40}',
            f"{signals.BASELINE_CONFIDENCE}{{{labels}}} 0.9",
            f"{signals.BASELINE_LOW}{{{labels}}} 0.05",
            f"{signals.BASELINE_FRAMES}{{{labels}}} 20",
            f'{signals.BASELINE_CLASS}{{{labels},class="road"}} 0.6',
            f'{signals.BASELINE_CLASS}{{{labels},class="traffic light"}} 0.4',
        ]
    )


def test_the_monitor_sums_replicas_and_judges_only_the_recent_window():
    pages = {"a": _metrics_text(100, 9000.0), "b": _metrics_text(100, 9000.0)}
    reading = read_servers(["a", "b"], pages.__getitem__)  # two replicas add up
    counts = reading.total(("segment", "1"))
    assert counts.frames == 200 and counts.mean_confidence == pytest.approx(0.9)
    assert reading.classes[("segment", "1")] == ["road", "traffic light"]
    monitor = Monitor(["a"], window=100, rule=ShiftRule(min_frames=50), fetch=lambda url: page)
    page = _metrics_text(1000, 90_000.0)  # 1000 frames at 0.9 ...
    monitor.read()
    page = _metrics_text(1100, 90_000.0 + 100 * 100 * 0.5)  # ... then 100 at 0.5
    monitor.read()
    (state,) = monitor.states()
    assert state.report.frames == 100 and state.report.mean_confidence == pytest.approx(0.5)
    assert state.report.flags and "mean confidence 50.0% against 90.0%" in state.report.flags[0]
    page = _metrics_text(60, 60 * 100 * 0.9, stub="segment_0_0:8")  # the stub restarted
    monitor.read()
    (state,) = monitor.states()  # its new series counts from zero; the old one is gone
    assert state.report.frames == 60 and state.report.mean_confidence == pytest.approx(0.9)


def test_a_replica_that_does_not_answer_leaves_the_others_judged(capsys):
    def fetch(url: str) -> str:
        if url == "b":
            raise ServingError("monitor: cannot read b: connection refused")
        return _metrics_text(100, 9000.0)

    monitor = Monitor(["a", "b"], window=50, rule=ShiftRule(min_frames=50), fetch=fetch)
    reading = monitor.read()
    assert reading.total(("segment", "1")).frames == 100 and list(reading.unreachable) == ["b"]
    (state,) = monitor.states()
    assert state.report.frames == 100 and not state.report.flags
    assert "cannot read b: connection refused; judging the other servers" in capsys.readouterr().err
    with pytest.raises(ServingError, match="cannot read b"):  # none answering is an error
        read_servers(["b"], fetch)


def test_monitor_input_errors_are_one_line_and_exit_2(tmp_path):
    with pytest.raises(InputError, match="no cycada signals among the metrics"):
        read_servers(["x"], lambda url: "nv_inference_count 3\n")
    with pytest.raises(InputError, match="expected host:port"):
        metrics_url("ftp://host")
    for args, message in (
        (["--url", "127.0.0.1:1", "--window", "0"], "--window 0: expected 1 or more frames"),
        (
            ["--url", "127.0.0.1:1", "--once", "--interval", "0"],
            "--interval 0.0: expected seconds above 0",
        ),
    ):
        done = cycada("monitor", *args)
        assert done.returncode == 2 and message in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def _frames(count: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(CLIP))
    frames = [capture.read()[1] for _ in range(count)]
    capture.release()
    return frames


def test_collect_keeps_unsure_frames_at_the_rate_without_near_duplicates(tmp_path):
    frames = _frames(60)
    folder = tmp_path / "collected"
    collector = Collector(CollectOptions(folder, below=0.6, rate=2.0), str(CLIP), 25.0)
    unsure, sure = np.full((4, 6), 120, np.uint8), np.full((4, 6), 200, np.uint8)
    for index, frame in enumerate(frames):
        collector.offer(index, frame, unsure if index < 50 else sure, "3")
    collector.offer(60, frames[39], unsure, "3")  # the last kept picture again: dropped
    rows = list(csv.DictReader((folder / "collected.csv").open()))
    assert [int(row["frame"]) for row in rows] == [0, 13, 26, 39]  # 2 a second, below 0.6
    assert {row["model_version"] for row in rows} == {"3"} and collector.duplicates == 1
    assert float(rows[0]["mean_confidence"]) == pytest.approx(120 / 255, abs=1e-4)
    images = sorted(p.name for p in (folder / "highway_day_960x540").iterdir())
    assert images == [f"{n:07d}.jpg" for n in (0, 13, 26, 39)]
    assert cv2.imread(str(folder / "highway_day_960x540" / images[0])).shape == (540, 960, 3)
    target = load_segmentation(f"folder:{folder}", "train", Path("."), CITYSCAPES19)
    assert len(target) == 4  # a seg run takes the folder as its target as it is
    with pytest.raises(DataError, match="--collect-below 1.5: expected a confidence in 0..1"):
        CollectOptions(folder, below=1.5)
    with pytest.raises(DataError, match="--collect-rate 0: expected frames per second above 0"):
        CollectOptions(folder, rate=0)
    with pytest.raises(DataError, match="expected a folder, found a file"):
        CollectOptions(folder / "collected.csv")
    done = cycada("segment-video", str(CLIP), "--out", str(tmp_path / "x.mp4"), "--collect",
                  str(folder), "--collect-below", "-0.1")  # fmt: skip
    assert done.returncode == 2 and done.stderr.strip().endswith("expected a confidence in 0..1")
    assert not (tmp_path / "x.mp4").exists()


def test_a_full_disk_stops_collecting_and_leaves_no_partial_file(tmp_path, caplog):
    folder = tmp_path / "collected"
    video = folder / "highway_day_960x540"
    video.mkdir(parents=True)
    # the first frame's write meets a full device (ENOSPC); collecting stops there
    os.symlink("/dev/full", video / ".0000000.jpg.partial")
    collector = Collector(CollectOptions(folder, below=0.9, rate=100.0), str(CLIP), 25.0)
    for index, frame in enumerate(_frames(3)):
        collector.offer(index, frame, np.zeros((2, 2), np.uint8), "1")
    assert collector.kept == 0 and "No space left on device" in collector.stopped
    assert list(video.iterdir()) == [] and not (folder / "collected.csv").exists()
    assert "collecting stopped" in caplog.text and "the segmentation goes on" in caplog.text


def _segment(client, frames) -> signals.SignalCounts:
    """Send ``frames`` to ``segment``; the client's own count of the signals of the answers."""
    counts = signals.SignalCounts(19)
    for frame in frames:
        image = cv2.cvtColor(cv2.resize(frame, (128, 72)), cv2.COLOR_BGR2RGB)[None]
        tensor = grpcclient.InferInput("images", list(image.shape), "UINT8")
        tensor.set_data_from_numpy(image)
        result = client.infer("segment", [tensor])
        counts.add_served(result.as_numpy("labels"), result.as_numpy("confidence"))
    return counts


def _stubs(url: str) -> set[str]:
    return set(read_servers([metrics_url(url)], _fetch).series[("segment", "1")])


@pytest.mark.slow
@pytest.mark.server
def test_served_signals_equal_the_clients_count_and_survive_a_reload(tmp_path, exported_repository):
    skip_without_tritonserver()
    repo = served_copy(exported_repository, tmp_path, polled=True)
    info_path = repo / "segment" / "1" / "endpoint.json"
    info = json.loads(info_path.read_text())
    names = info["class_names"]
    # a baseline as export records it, of footage the seeded weights are sure of (they are not):
    # the served signals must show the shift through the monitor (segment_encoded has none)
    info["baseline"] = {
        "stage": "feature", "dataset": "constructed", "frames": 10, "mean_confidence": 0.99,
        "low_confidence_share": 0.0, "class_shares": {names[0]: 1.0}, "source_class_shares": {},
    }  # fmt: skip
    info_path.unlink()  # a file of its own, never the shared repository's
    info_path.write_text(json.dumps(info))
    options = ServerOptions.on_free_ports(repo, poll_seconds=1.0)
    with TritonServer(options) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        url = f"127.0.0.1:{server.options.metrics_port}"
        loaded = _stubs(url)
        expected = _segment(client, _frames(5))  # the warm-up's zero frame is not counted
        ok, jpeg = cv2.imencode(".jpg", _frames(1)[0])
        tensor = grpcclient.InferInput("frames", [1, jpeg.size], "UINT8")
        tensor.set_data_from_numpy(jpeg.reshape(1, -1))
        client.infer("segment_encoded", [tensor])  # its first decode imports OpenCV
        time.sleep(3)  # three polls: serving wrote nothing into the repository, nothing reloads
        assert _stubs(url) == loaded
        assert not [p for p in repo.rglob("__pycache__") if p.is_dir()]
        reading = read_servers([metrics_url(url)], _fetch)
        counts, classes = reading.total(("segment", "1")), reading.classes[("segment", "1")]
        assert (counts.frames, counts.pixels) == (5, 5 * 128 * 72)
        assert counts.low_pixels == expected.low_pixels
        assert counts.confidence_sum == pytest.approx(expected.confidence_sum, rel=1e-9)
        served_pixels = dict(zip(classes, counts.class_pixels.tolist()))
        assert served_pixels == dict(zip(names, expected.class_pixels.tolist()))
        done = cycada("monitor", "--url", url, "--once", "--min-frames", "5", "--json")
        assert done.returncode == 1, done.stderr  # a shift flagged: exit 1
        states = {s["model"]: s for s in json.loads(done.stdout)["models"]}
        assert states["segment"]["shift"] and states["segment"]["frames"] == 5
        assert any("mean confidence" in flag for flag in states["segment"]["flags"])
        assert states["segment_encoded"]["baseline"] is None
        # a changed config makes the polling server load the model again beside the old one:
        # two stubs once shared each metric and the server aborted when the old one let go
        before = _stubs(url)
        config = repo / "segment" / "config.pbtxt"
        note = 'parameters { key: "note" value: { string_value: "reloaded" } }\n'
        config.write_text(config.read_text() + note)
        deadline = time.monotonic() + 60
        while _stubs(url) & before and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _stubs(url) & before, "the model was not reloaded"
        again = _segment(client, _frames(3))
        assert server.process.poll() is None, "the server died on the reload"
        total = read_servers([metrics_url(url)], _fetch).total(("segment", "1"))
        assert total.frames == 3 and total.low_pixels == again.low_pixels  # new stubs from zero
        done = cycada("monitor", "--url", url, "--once")  # 3 frames since the reload: not judged
        assert done.returncode == 0, done.stderr
        assert "too few to judge" in done.stdout
        assert "no baseline (exported without label-free signals)" in done.stdout
        done = cycada("monitor", "--url", f"127.0.0.1:{server.options.http_port}", "--once")
        assert done.returncode == 2 and "not a metrics endpoint" in done.stderr


def _fetch(url: str) -> str:
    from cycada.clients.monitor import fetch_text

    return fetch_text(url)
