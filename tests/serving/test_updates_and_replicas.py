"""A served repository takes a new export without a restart, never swaps in a version that does
not load, and several replicas keep a video going when one is killed for good."""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from cycada.benchmarks.served import random_run
from cycada.clients.video import VideoOptions, segment_video
from cycada.export.exporter import ExportOptions, export_run
from cycada.export.repository import versions
from cycada.serving.server import ServerOptions, TritonServer, free_port
from cycada.training.segmentation.scene_writer import write_clip
from tests.helpers import (
    cycada,
    serve_process,
    served_copy,
    skip_without_tritonserver,
    tritonserver_of,
)

pytestmark = [pytest.mark.slow, pytest.mark.server]

skip_without_tritonserver()


@pytest.fixture(scope="module")
def repository(tmp_path_factory, exported_repository):
    return served_copy(exported_repository, tmp_path_factory.mktemp("updates"), polled=True)


def _failed_requests(url: str, model: str) -> int:
    stats = grpcclient.InferenceServerClient(url).get_inference_statistics(model)
    return sum(s.inference_stats.fail.count for s in stats.model_stats)


def _wait_ready(url: str, model: str, version: str, timeout: float = 120.0) -> float:
    client = grpcclient.InferenceServerClient(url)
    started = time.monotonic()
    while not client.is_model_ready(model, version):
        assert time.monotonic() - started < timeout, f"{model} version {version} never ready"
        time.sleep(0.1)
    return time.monotonic() - started


def _state(client, model: str, version: str) -> str:
    """The repository index's state of one model version ('' when not listed)."""
    for entry in client.get_model_repository_index().models:
        if entry.name == model and entry.version == version:
            return entry.state
    return ""


def _versions_by_frame(path) -> list[tuple[int, str]]:
    with open(path, newline="") as handle:
        return [(int(row["frame"]), row["model_version"]) for row in csv.DictReader(handle)]


def test_an_export_into_another_repository_reloads_nothing_served(exported_repository, tmp_path):
    """A polling server reloads a model when a file under its folder changes, a new hard link to
    it included: an export elsewhere on the machine (the same cache) leaves the served models
    loaded once."""
    run = random_run("fastscnn", tmp_path / "run", generators="resnet6")  # the seeded weights
    served = served_copy(exported_repository, tmp_path, polled=True)
    log = tmp_path / "tritonserver.log"
    with TritonServer(ServerOptions.on_free_ports(served, poll_seconds=1, log_file=log)):
        export_run(run, tmp_path / "elsewhere", ExportOptions(fp16=False), log=lambda _: None)
        time.sleep(3)  # three polls
    loads = [line for line in log.read_text().splitlines() if "successfully loaded" in line]
    assert len(loads) == len(list(served.glob("*/config.pbtxt"))), "\n".join(loads)


def test_an_export_into_a_served_repository_is_served_without_a_restart(repository, tmp_path):
    """segment-video on a live-paced clip while a second export lands: every frame once, in
    order, no failed request, both versions answered, and each model loaded again once (the
    export is staged beside the repository); then a version that cannot load never replaces
    the serving one, and a version that does not exist is the caller's error."""
    run = random_run("fastscnn", tmp_path / "run", generators="resnet6")  # the seeded weights
    clip = write_clip(tmp_path / "clip.mp4", 200, 96, 48, fps=10.0, seed=5)
    log = tmp_path / "tritonserver.log"
    options = ServerOptions.on_free_ports(repository, poll_seconds=1, log_file=log)
    with TritonServer(options) as server:
        video = VideoOptions(
            urls=[server.grpc_url], width=96, csv_path=tmp_path / "frames.csv", realtime=True
        )
        summaries = []
        playing = threading.Thread(
            target=lambda: summaries.append(segment_video(str(clip), tmp_path / "o.mp4", video))
        )
        playing.start()
        export_run(run, repository, ExportOptions(fp16=False), log=lambda _: None)
        _wait_ready(server.grpc_url, "segment", "2")
        assert playing.is_alive(), "the clip ended before the new version served"
        playing.join(timeout=120)
        assert summaries and summaries[0].frames_written == 200
        rows = _versions_by_frame(tmp_path / "frames.csv")
        assert [frame for frame, _ in rows] == list(range(200))
        assert {version for _, version in rows} == {"1", "2"}
        assert rows[-1][1] == "2"
        assert _failed_requests(server.grpc_url, "segment") == 0
        models = list(repository.glob("*/config.pbtxt"))
        loads = [line for line in log.read_text().splitlines() if "successfully loaded" in line]
        assert len(loads) == 2 * len(models), "\n".join(loads)  # with staging in the model
        # folders, Triton saw the export start and loaded each model once more

        # a version 3 whose graph is broken: it fails to load, version 2 answers on
        staging = repository / "segment" / ".3.partial"
        shutil.copytree(repository / "segment" / "2", staging)
        (staging / "model.onnx").write_bytes(b"not an onnx graph")
        os.rename(staging, repository / "segment" / "3")
        client = grpcclient.InferenceServerClient(server.grpc_url)
        deadline = time.monotonic() + 60
        while _state(client, "segment", "3") != "UNAVAILABLE":  # its load failed
            assert time.monotonic() < deadline, "version 3 was never tried"
            time.sleep(0.2)
        assert not client.is_model_ready("segment", "3")
        frame = np.zeros((1, 48, 96, 3), np.uint8)
        tensor = grpcclient.InferInput("images", list(frame.shape), "UINT8")
        tensor.set_data_from_numpy(frame)
        assert client.infer("segment", [tensor]).get_response().model_version == "2"

        done = cycada(
            "segment-video", str(clip), "--out", str(tmp_path / "pinned.mp4"), "--url",
            server.grpc_url, "--model-version", "7", "--quiet",
        )  # fmt: skip
        assert done.returncode == 2
        assert done.stderr.strip().splitlines()[-1].startswith("cycada: error: --model-version 7")
        assert "version(s)" in done.stderr and not (tmp_path / "pinned.mp4").exists()


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(60)
    if process.poll() is None:
        process.kill()


def test_a_replica_killed_for_good_costs_no_frame_and_one_that_comes_back_is_used(
    exported_repository, tmp_path
):
    """Two `cycada serve --no-restart` replicas behind --url a,b; kill -9 of one's tritonserver
    mid-video: every frame once, in order; the replica started again on its ports serves
    frames of the same video."""
    repository = served_copy(exported_repository, tmp_path)
    clip = write_clip(tmp_path / "clip.mp4", 160, 96, 48, fps=10.0, seed=6)
    first, first_port = serve_process(repository, "--no-restart")
    second, second_port = serve_process(repository, "--no-restart")
    back = None
    try:
        urls = f"127.0.0.1:{first_port},127.0.0.1:{second_port}"
        csv_path = tmp_path / "frames.csv"
        video = subprocess.Popen(
            [
                sys.executable, "-m", "cycada.cli", "segment-video", str(clip), "--out",
                str(tmp_path / "out.mp4"), "--url", urls, "--width", "96", "--realtime",
                "--csv", str(csv_path), "--quiet", "--retry-window", "60",
            ],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(3)
        os.kill(tritonserver_of(second.pid), signal.SIGKILL)
        second.wait(60)  # --no-restart: the replica is gone for good
        time.sleep(1)
        back_grpc = f"127.0.0.1:{second_port}"
        back = TritonServer(
            ServerOptions(
                repository,
                grpc_port=second_port,
                http_port=free_port(),
                metrics_port=free_port(),
                models=["segment"],
            )
        )
        back.start(120)
        _, stderr = video.communicate(timeout=300)
        assert video.returncode == 0, stderr[-2000:]
        assert "160 frames written (160 read, 0 corrupt)" in stderr
        frames = [frame for frame, _ in _versions_by_frame(csv_path)]
        assert frames == list(range(160))
        stats = grpcclient.InferenceServerClient(back_grpc).get_inference_statistics("segment")
        served_again = sum(s.inference_stats.success.count for s in stats.model_stats)
        assert served_again > 0, "the replica that came back got no request"
    finally:
        if back is not None:
            back.stop()
        _stop(first)
        _stop(second)


def test_an_export_killed_half_way_leaves_the_served_version_answering(
    exported_repository, tmp_path
):
    """kill -9 of `cycada export` into a served repository while it writes: the server keeps
    answering with version 1, never reloads and never sees the half-written version; the next
    export removes what the dead one left and lands whole as version 2."""
    repository = served_copy(exported_repository, tmp_path, polled=True)
    staging = repository.parent / f".{repository.name}.export"
    run = random_run("fastscnn", tmp_path / "run", generators="resnet6")
    log = tmp_path / "tritonserver.log"
    options = ServerOptions.on_free_ports(repository, poll_seconds=1, log_file=log)
    with TritonServer(options) as server:
        loaded = log.read_text().count("successfully loaded")
        export = subprocess.Popen(
            [sys.executable, "-m", "cycada.cli", "export", str(run), "--repository",
             str(repository), "--no-fp16"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while not list(staging.glob("*/*/*")):
            assert export.poll() is None and time.monotonic() < deadline, "no export under way"
            time.sleep(0.01)
        os.kill(export.pid, signal.SIGKILL)
        export.wait()
        time.sleep(3)  # several polls of the repository
        client = grpcclient.InferenceServerClient(server.grpc_url)
        assert client.is_server_ready() and client.is_model_ready("segment", "1")
        frame = np.zeros((1, 48, 96, 3), np.uint8)
        tensor = grpcclient.InferInput("images", list(frame.shape), "UINT8")
        tensor.set_data_from_numpy(frame)
        assert client.infer("segment", [tensor]).get_response().model_version == "1"
        assert log.read_text().count("successfully loaded") == loaded, "a model was reloaded"
        assert list(staging.iterdir()), "the dead export left nothing to clean"
        done = cycada("export", str(run), "--repository", str(repository), "--no-fp16")
        assert done.returncode == 0, done.stderr
        assert not staging.exists()
        assert not list(repository.glob("*/.*"))
        assert not list(repository.glob("*/runtime/.*"))
        for model in ("segment", "segment_encoded", "translate_s2t", "translate_t2s"):
            assert versions(repository / model) == [1, 2], model
        _wait_ready(server.grpc_url, "segment", "2")
        assert client.infer("segment", [tensor]).get_response().model_version == "2"
