"""The real tritonserver on loopback, serving a repository exported from tiny trained runs.

Every endpoint is checked against in-process ONNX Runtime on the same files (labels exactly
equal), then bad requests, a second version and a model that fails to load.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from cycada.benchmarks.served import random_run
from cycada.clients.bench import bench_input
from cycada.clients.load import run_load
from cycada.errors import ConfigError, ServingError
from cycada.export.exporter import ExportOptions, export_run
from cycada.export.parity import scene_images
from cycada.serving.server import ServerOptions, TritonServer, free_port
from cycada.training.digits.pipeline import run_digits
from tests.helpers import (
    cycada,
    in_spawned_child,
    serve_process,
    served_copy,
    served_engine_outputs,
    shm_regions_of,
    skip_without_tritonserver,
    tiny_digits_config,
    tritonserver_of,
)

pytestmark = [pytest.mark.slow, pytest.mark.server]

skip_without_tritonserver()


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    """Untrained, seeded weights: what is served is checked against the same graphs in process
    (a trained run goes through export and serving in the demo tests); the seed lets the graph
    cache serve the fp32 graphs other modules exported."""
    return random_run("fastscnn", tmp_path_factory.mktemp("seg_run"), generators="resnet6")


@pytest.fixture(scope="module")
def repository(tmp_path_factory, exported_repository):
    """The session's export of the same seeded weights as ``seg_run``, copied."""
    return served_copy(exported_repository, tmp_path_factory.mktemp("served"))


def options(repo, **kwargs) -> ServerOptions:
    """Free ports, and no polling unless asked: these servers serve what is there at start."""
    return ServerOptions.on_free_ports(repo, **{"poll_seconds": 0, **kwargs})


@pytest.fixture(scope="module")
def server(repository):
    with TritonServer(options(repository)) as running:
        yield running


def infer(server, model, array, version="", input_name="images", datatype="UINT8"):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput(input_name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return client.infer(model, [tensor], model_version=version)


def local(repo, model, array, version="1"):
    """The outputs of the engine the server runs for this version (the export's measured
    choice: ONNX Runtime, or OpenVINO where it was faster), with one instance's threads."""
    outputs = in_spawned_child(served_engine_outputs, repo / model / version, array)
    outputs.pop("engine")
    return outputs


def test_segment_and_translate_match_the_same_engine_in_process(server, repository):
    for image in scene_images(count=3, width=160):
        batch = image[None]
        served = infer(server, "segment", batch)
        expected = local(repository, "segment", batch)
        np.testing.assert_array_equal(served.as_numpy("labels"), expected["labels"])
        np.testing.assert_array_equal(served.as_numpy("confidence"), expected["confidence"])
        for model in ("translate_s2t", "translate_t2s"):
            translated = infer(server, model, batch).as_numpy("translated")
            np.testing.assert_array_equal(translated, local(repository, model, batch)["translated"])


def test_encoded_frames_give_the_labels_of_the_decoded_image(server, repository):
    image = scene_images(count=1, width=160)[0]
    ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    served = infer(server, "segment_encoded", png.reshape(1, -1), input_name="frames")
    expected = local(repository, "segment", image[None])["labels"]
    np.testing.assert_array_equal(served.as_numpy("labels"), expected)
    assert png.nbytes < image.nbytes


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, repository):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    images = [np.random.default_rng(i).integers(0, 256, (1, 64, 96, 3), np.uint8) for i in range(6)]
    results = {}

    def done(index):
        return lambda result, error: results.__setitem__(index, (result, error))

    for index, array in enumerate(images):
        tensor = grpcclient.InferInput("images", list(array.shape), "UINT8")
        tensor.set_data_from_numpy(array)
        client.async_infer("segment", [tensor], done(index))
    deadline = time.monotonic() + 60
    while len(results) < len(images) and time.monotonic() < deadline:
        time.sleep(0.05)
    for index, array in enumerate(images):
        result, error = results[index]
        assert error is None
        np.testing.assert_array_equal(
            result.as_numpy("labels"), local(repository, "segment", array)["labels"]
        )


def _truncated_jpeg() -> np.ndarray:
    image = scene_images(count=1, width=160)[0]
    data = cv2.imencode(".jpg", image)[1].reshape(-1)
    return data[: len(data) // 3][None]


def _png_bomb() -> np.ndarray:
    """73 KB on the wire, 75 MB decoded: refused from its header, never decoded."""
    data = cv2.imencode(".png", np.zeros((5000, 5000), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return data[1].reshape(1, -1)


@pytest.mark.parametrize(
    "model,array,input_name,datatype,message",
    [
        ("segment", np.zeros((1, 8, 8, 3), np.float32), "images", "FP32", "expects 'UINT8'"),
        ("segment", np.zeros((1, 8, 8, 4), np.uint8), "images", "UINT8", "shape"),
        ("segment", np.zeros((1, 0, 8, 3), np.uint8), "images", "UINT8", "empty"),
        ("segment", np.zeros((1, 5000, 4000, 3), np.uint8), "images", "UINT8", "limit"),
        ("translate_s2t", np.zeros((1, 0, 8, 3), np.uint8), "images", "UINT8", "empty"),
        ("translate_t2s", np.zeros((1, 4100, 4100, 3), np.uint8), "images", "UINT8", "limit"),
        (
            "segment_encoded",
            np.frombuffer(b"\x89PNG broken", np.uint8)[None],
            "frames",
            "UINT8",
            "not a JPEG or PNG file",
        ),
        ("segment_encoded", _truncated_jpeg(), "frames", "UINT8", "truncated or corrupt"),
        ("segment_encoded", _png_bomb(), "frames", "UINT8", "5000x5000, over the pixel limit"),
    ],
)
def test_a_bad_request_gets_its_own_error_and_the_server_keeps_serving(
    server, model, array, input_name, datatype, message
):
    with pytest.raises(InferenceServerException, match=message) as refused:
        infer(server, model, array, input_name=input_name, datatype=datatype)
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"  # bad input, not a fault
    good = infer(server, "segment", np.zeros((1, 16, 16, 3), np.uint8))
    assert good.as_numpy("labels").shape == (1, 16, 16)


def test_frames_padded_with_megabytes_of_zeros_do_not_hold_the_server(server):
    """Two rows of a small JPEG followed by 20 MB of zeros at once (each held an instance for
    about 30 s while the padding was trimmed in Python), then a plain request: all answered
    within seconds. A row over the byte limit is refused as the caller's mistake."""
    image = scene_images(count=1, width=96)[0]
    ok, jpeg = cv2.imencode(".jpg", image)
    padded = np.zeros((1, 20 * 1024 * 1024), np.uint8)
    padded[0, : jpeg.size] = jpeg.ravel()
    client = grpcclient.InferenceServerClient(server.grpc_url)

    def send(row, timeout=15.0):
        tensor = grpcclient.InferInput("frames", list(row.shape), "UINT8")
        tensor.set_data_from_numpy(row)
        return client.infer("segment_encoded", [tensor], client_timeout=timeout)

    with ThreadPoolExecutor(2) as pool:
        padded_answers = [pool.submit(send, padded) for _ in range(2)]
        plain = send(jpeg.reshape(1, -1))
        for answer in padded_answers:
            labels = answer.result().as_numpy("labels")
            np.testing.assert_array_equal(labels, plain.as_numpy("labels"))
    too_long = np.zeros((1, 25 * 1024 * 1024), np.uint8)
    too_long[0, : jpeg.size] = jpeg.ravel()
    with pytest.raises(InferenceServerException, match="over the limit") as refused:
        send(too_long)
    assert "INVALID_ARG" in str(refused.value.status())


def test_a_second_export_is_version_2_and_both_are_served(tmp_path, seg_run, repository):
    repo = served_copy(repository, tmp_path)
    export_run(seg_run, repo, ExportOptions(fp16=False), log=lambda _: None)
    assert (repo / "segment" / "2" / "model.onnx").exists()
    with TritonServer(options(repo)) as running:
        client = grpcclient.InferenceServerClient(running.grpc_url)
        for version in ("1", "2"):
            assert client.is_model_ready("segment", version)
        labels = infer(running, "segment", np.zeros((1, 16, 16, 3), np.uint8), version="2")
        assert labels.as_numpy("labels").shape == (1, 16, 16)


def test_cpus_pin_the_server_and_its_backend_stubs(repository):
    cpus = {max(os.sched_getaffinity(0))}
    with TritonServer(options(repository, models=["segment"], cpus=cpus)) as running:
        root = running.process.pid
        children = Path(f"/proc/{root}/task/{root}/children").read_text().split()
        assert children, "the Python backend stub should be running"
        for pid in [root, *map(int, children)]:
            assert os.sched_getaffinity(pid) == cpus
        labels = infer(running, "segment", np.zeros((1, 16, 16, 3), np.uint8))
        assert labels.as_numpy("labels").shape == (1, 16, 16)


def test_a_model_that_fails_to_load_stops_the_server_with_its_error(tmp_path, repository):
    repo = served_copy(repository, tmp_path)
    (repo / "segment" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    server = TritonServer(options(repo))
    with pytest.raises(ServingError, match="failed to load 'segment'"):
        server.start(timeout=120)
    assert server.process is None


def test_digits_run_serves_class_ids_and_probabilities(tmp_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits_domain")
    rng = np.random.default_rng(0)
    for label in range(10):
        (folder / str(label)).mkdir()
        for index in range(4):
            cv2.imwrite(
                str(folder / str(label) / f"{index}.png"), rng.integers(0, 256, (28, 28), np.uint8)
            )
    run_dir = tmp_path / "run"
    run_digits(tiny_digits_config(f"folder:{folder}", "feature.enabled=false"), run_dir, quiet=True)
    repo = tmp_path / "repo"
    report = export_run(run_dir, repo, ExportOptions(fp16=False), log=lambda _: None)
    assert "classify_digits" in report.versions and all(row.ok for row in report.rows)
    info = json.loads((repo / "classify_digits" / "1" / "endpoint.json").read_text())
    digits = rng.integers(0, 256, (5, 28, 28, info["in_channels"]), np.uint8)
    channels = info["in_channels"]
    bad_requests = [  # (array, datatype, what the refusal says)
        (np.zeros((1, 28, 28, channels), np.float32), "FP32", "expects 'UINT8'"),
        (np.zeros((1, 28, 28, channels + 1), np.uint8), "UINT8", "shape"),
        (np.zeros((1, 0, 28, channels), np.uint8), "UINT8", "empty"),
        (np.zeros((257, 28, 28, channels), np.uint8), "UINT8", "batch"),
        (np.zeros((1, 4200, 4200, channels), np.uint8), "UINT8", "limit"),
        # 65 images of 1024x1024: each within the image limit, the request over its budget
        (np.zeros((65, 1024, 1024, channels), np.uint8), "UINT8", "over the request limit"),
    ]
    with TritonServer(options(repo, models=["classify_digits"])) as running:
        for array, datatype, message in bad_requests:
            with pytest.raises(InferenceServerException, match=message) as refused:
                infer(running, "classify_digits", array, datatype=datatype)
            assert refused.value.status() == "StatusCode.INVALID_ARGUMENT", message
            assert infer(running, "classify_digits", digits[:1]).as_numpy("class_ids").shape == (
                1,
                1,
            )
        result = infer(running, "classify_digits", digits)
    expected = local(repo, "classify_digits", digits)
    np.testing.assert_array_equal(result.as_numpy("class_ids"), expected["class_ids"])
    np.testing.assert_allclose(result.as_numpy("probabilities").sum(1), 1.0, rtol=1e-5)


def test_cycada_serve_prints_endpoints_and_stops_cleanly_on_sigterm(repository, tmp_path):
    repository = served_copy(repository, tmp_path)  # its own path: stubs show it
    grpc_port = free_port()
    command = [
        sys.executable,
        "-m",
        "cycada.cli",
        "serve",
        "--repository",
        str(repository),
        "--grpc-port",
        str(grpc_port),
        "--http-port",
        str(free_port()),
        "--metrics-port",
        str(free_port()),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if line.startswith("serving:") or not line:
                break
        assert any("segment_encoded" in line and "READY" in line for line in lines), lines
        url = f"127.0.0.1:{grpc_port}"
        status = cycada("serve", "--status", "--url", url)
        assert "ready=yes" in status.stdout
        status = cycada("serve", "--status", "--url", url, "--json")
        (state,) = json.loads(status.stdout)
        assert state["url"] == url and state["ready"] and state["live"]
        assert {"name": "segment_encoded", "version": "1", "state": "READY", "reason": ""} in (
            state["models"]
        )
        # a replica down: every server still reported, the exit and one line say which is down
        status = cycada("serve", "--status", "--url", f"{url},127.0.0.1:1", "--json")
        up, down = json.loads(status.stdout)
        assert up["ready"] and not down["ready"] and "no Triton server answers" in down["error"]
        assert status.returncode == 1
        assert status.stderr.strip() == "cycada: error: 1 of 2 servers not answering: 127.0.0.1:1"
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stubs = subprocess.run(["pgrep", "-f", str(repository)], capture_output=True, text=True)
    assert stubs.stdout.strip() == "", "stub processes outlived the server"


def _answered(client, model: str) -> int:
    """Requests ``model`` answered since the server started (Triton's statistics)."""
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"]
    return sum(int(version["inference_stats"]["success"].get("count", 0)) for version in stats)


def test_cycada_serve_restarts_a_killed_server_on_the_same_ports(repository, tmp_path):
    repository = served_copy(repository, tmp_path)
    process, grpc_port = serve_process(repository)
    url = f"127.0.0.1:{grpc_port}"
    bench = bench_input("segment", 16, 16)
    loads = []  # the bench's closed loop runs across the kill and waits the restart out
    load = threading.Thread(
        target=lambda: loads.append(run_load(url, "segment", bench.array, 2, 12.0, 1.0))
    )
    try:
        first = tritonserver_of(process.pid)
        load.start()
        # the kill must land in the load's measured window: after its workers answer (their
        # start takes seconds on a busy machine) and past its 1 s warm-up
        stats = grpcclient.InferenceServerClient(url)
        deadline = time.monotonic() + 120
        while _answered(stats, "segment") < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2.0)
        killed_regions = shm_regions_of(first)  # the stubs' shared memory, 16 MB each
        assert killed_regions
        os.kill(first, signal.SIGKILL)
        restarted = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not restarted:
            line = process.stdout.readline()
            if "tritonserver exited with code" in line:
                assert "restarting it in 1 s on the same ports" in line
            restarted += [line] if "tritonserver restarted" in line else []
        assert restarted, "no restart logged"
        second = tritonserver_of(process.pid)
        assert second != first
        second_regions = shm_regions_of(second)
        assert second_regions and not killed_regions & set(os.listdir("/dev/shm"))  # removed
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        tensor = grpcclient.InferInput("images", [1, 16, 16, 3], "UINT8")
        tensor.set_data_from_numpy(np.zeros((1, 16, 16, 3), np.uint8))
        assert client.infer("segment", [tensor]).as_numpy("labels").shape == (1, 16, 16)
        load.join(120)
        (result,) = loads
        assert result.errors == 0 and result.error_messages == []
        assert result.requests > 0 and max(result.latencies_ms) > 1000  # one waited the restart
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        assert not second_regions & set(os.listdir("/dev/shm"))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = next((tmp_path / "logs").glob("tritonserver-repository-*.log")).read_text()
    assert log.count("--- cycada: tritonserver") == 2  # appended, not truncated, at the restart
    assert not list(repository.glob("*.log"))  # nothing written inside the repository


def _line_reader(process: subprocess.Popen) -> queue.Queue:
    """The process's output lines, read on a thread (a test waits for one with a deadline)."""
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _wait_for_line(lines: queue.Queue, text: str, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            line = lines.get(timeout=0.2)
            if text in line:
                return line
    raise AssertionError(f"no line with {text!r} within {timeout:.0f} s")


def test_a_restart_on_a_held_port_is_tried_again_and_a_hung_server_is_restarted(
    repository, tmp_path
):
    """kill -9 of tritonserver, then another process holds its gRPC port for 3 s: the restarts
    that fail count against the budget and are tried again until one comes up. Then SIGSTOP of
    the new server (alive, not answering): restarted after --hang-timeout."""
    repository = served_copy(repository, tmp_path)
    process, grpc_port = serve_process(repository, "--restart-pause", "0.5", "--hang-timeout", "3")
    lines = _line_reader(process)
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # as a server does: a connection of the dead server's left in TIME_WAIT must not block it
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        first = tritonserver_of(process.pid)
        # `cycada serve` is stopped while the server dies and the port is taken, so its restart
        # cannot win the port first on a busy machine; the restart comes after SIGCONT
        process.send_signal(signal.SIGSTOP)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:  # the port is free once the dead server's socket is gone: take it
            try:
                holder.bind(("127.0.0.1", grpc_port))
                break
            except OSError:
                assert time.monotonic() < deadline, "the killed server kept its port"
                time.sleep(0.05)
        holder.listen()
        process.send_signal(signal.SIGCONT)
        assert "restart failed" in _wait_for_line(lines, "restart failed")
        time.sleep(3)
        holder.close()
        _wait_for_line(lines, "tritonserver restarted")
        second = tritonserver_of(process.pid)
        assert second != first
        os.kill(second, signal.SIGSTOP)  # a hang: the process lives, nothing answers
        hung = _wait_for_line(lines, "tritonserver hung")
        assert "not answering /v2/health/live for 3 s" in hung
        _wait_for_line(lines, "tritonserver restarted")
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        tensor = grpcclient.InferInput("images", [1, 16, 16, 3], "UINT8")
        tensor.set_data_from_numpy(np.zeros((1, 16, 16, 3), np.uint8))
        assert client.infer("segment", [tensor]).as_numpy("labels").shape == (1, 16, 16)
        assert not Path(f"/proc/{second}").exists()  # the hung server is gone, not left stopped
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        holder.close()
        if process.poll() is None:
            process.kill()
            process.wait()


def test_no_restart_exits_with_the_error_and_kill_9_of_serve_leaves_no_orphans(
    repository, tmp_path
):
    repository = served_copy(repository, tmp_path)
    process, _ = serve_process(repository, "--no-restart")
    try:
        os.kill(tritonserver_of(process.pid), signal.SIGKILL)
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 1 and "tritonserver exited with code -9" in output
    finally:
        if process.poll() is None:
            process.kill()
    process, _ = serve_process(repository)
    server = tritonserver_of(process.pid)
    process.kill()  # kill -9 of `cycada serve` itself: the server must not keep the ports
    process.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and Path(f"/proc/{server}").exists():
        time.sleep(0.2)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(server, os.WNOHANG)
    stray = subprocess.run(["pgrep", "-f", str(repository)], capture_output=True, text=True)
    assert stray.stdout.strip() == "", "tritonserver or its stubs outlived cycada serve"


def test_readiness_refuses_a_server_that_is_not_ours(repository, tmp_path):
    with TritonServer(options(repository, models=["segment"])) as running:
        impostor = ServerOptions(
            repository,
            grpc_port=free_port(),
            http_port=running.options.http_port,  # someone else's server answers here
            metrics_port=free_port(),
            models=["segment"],
        )
        with pytest.raises(ServingError, match="another server answers"):
            TritonServer(impostor).start(timeout=60)


def test_segment_video_survives_five_server_kills_with_every_frame_once(repository, tmp_path):
    """kill -9 of tritonserver five times during one video: `cycada serve` restarts it, the
    client waits each restart out and resends what was in flight; the labels equal those of an
    uninterrupted run, frame for frame."""
    from cycada.training.segmentation.scene_writer import write_clip

    repository = served_copy(repository, tmp_path)
    clip = write_clip(tmp_path / "clip.mp4", 200, 96, 48, seed=4)
    process, grpc_port = serve_process(repository, "--restart-pause", "0.25")  # 0.25, 0.5, ... 4 s
    try:

        def segment(name, kills=0):
            labels = tmp_path / name
            video = subprocess.Popen(
                [
                    sys.executable, "-m", "cycada.cli", "segment-video", str(clip),
                    "--out", str(tmp_path / f"{name}.mp4"), "--url", f"127.0.0.1:{grpc_port}",
                    "--width", "96", "--window", "4", "--labels-dir", str(labels),
                    "--csv", str(tmp_path / f"{name}.csv"), "--retry-window", "90",
                ],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            killed = []
            for _ in range(kills):  # each time: a new server, 10 more frames done, kill it
                deadline = time.monotonic() + 120
                server = tritonserver_of(process.pid)
                while server in killed:
                    assert time.monotonic() < deadline, "no restarted server"
                    time.sleep(0.05)
                    server = tritonserver_of(process.pid)
                done = len(list(labels.glob("*.png")))
                while len(list(labels.glob("*.png"))) < done + 10:
                    assert video.poll() is None, "the video ended before the last kill"
                    assert time.monotonic() < deadline, "the video stopped making progress"
                    time.sleep(0.05)
                os.kill(server, signal.SIGKILL)
                killed.append(server)
            _, stderr = video.communicate(timeout=300)
            assert video.returncode == 0, stderr[-2000:]
            return labels, stderr  # the summary is a log line

        killed, log = segment("killed", kills=5)
        assert "200 frames written (200 read, 0 corrupt)" in log
        rows = (tmp_path / "killed.csv").read_text().splitlines()[1:]
        assert [int(row.split(",")[0]) for row in rows] == list(range(200))  # once, in order
        plain, _ = segment("plain")
        for png in sorted(plain.glob("*.png")):
            np.testing.assert_array_equal(
                cv2.imread(str(killed / png.name), cv2.IMREAD_UNCHANGED),
                cv2.imread(str(png), cv2.IMREAD_UNCHANGED),
            )
        assert len(list(killed.glob("*.png"))) == 200
    finally:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(60)
        if process.poll() is None:
            process.kill()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed (needed to make a test certificate)")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
            "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_and_secret_refuse_a_request_missing_either(repository, tmp_path):
    from cycada.clients.triton_client import ModelClient
    from cycada.grpc_security import GrpcSecurity
    from cycada.training.segmentation.scene_writer import write_clip
    from tests.helpers import cycada

    cert, key = _self_signed(tmp_path)
    secured = options(
        repository, models=["segment"], tls_cert=cert, tls_key=key, auth_secret="s3cret"
    )
    image = np.zeros((1, 16, 16, 3), np.uint8)
    tensor = grpcclient.InferInput("images", list(image.shape), "UINT8")
    tensor.set_data_from_numpy(image)
    with TritonServer(secured) as running:
        plain = grpcclient.InferenceServerClient(running.grpc_url)
        with pytest.raises(InferenceServerException):  # no TLS: no answer at all
            plain.infer("segment", [tensor], client_timeout=10)
        tls = grpcclient.InferenceServerClient(
            running.grpc_url, ssl=True, root_certificates=str(cert)
        )
        with pytest.raises(InferenceServerException, match="cycada-auth"):  # no secret
            tls.infer("segment", [tensor], client_timeout=10)
        with pytest.raises(InferenceServerException, match="cycada-auth"):  # model control
            tls.load_model("segment")
        header = {"triton-grpc-protocol-cycada-auth": "s3cret"}  # Triton's prefix on the key
        answered = tls.infer("segment", [tensor], headers=header)
        assert answered.as_numpy("labels").shape == (1, 16, 16)
        security = GrpcSecurity(ssl=True, root_cert=cert, auth_header=("cycada-auth", "s3cret"))
        with ModelClient(running.grpc_url, "segment", security=security) as client:
            assert client.request({"images": image}, ["labels"])["labels"].shape == (1, 16, 16)
        wrong = GrpcSecurity(ssl=True, root_cert=cert, auth_header=("cycada-auth", "guess"))
        with pytest.raises(ServingError, match="restricted"):  # its model config is guarded
            ModelClient(running.grpc_url, "segment", security=wrong)
        # every API but health and metadata needs the secret
        assert tls.is_server_live() and tls.get_model_metadata("segment").name == "segment"
        for call in (
            lambda **h: tls.get_inference_statistics("segment", **h),
            lambda **h: tls.get_model_config("segment", **h),
            lambda **h: tls.get_log_settings(**h),
            lambda **h: tls.get_trace_settings(**h),
        ):
            with pytest.raises(InferenceServerException, match="cycada-auth"):
                call()
            call(headers=header)
        # the command line takes the secret from a file, and never shows one it cannot parse
        secret_file = tmp_path / "secret.txt"
        secret_file.write_text("s3cret\n")
        clip = write_clip(tmp_path / "clip.mp4", 6, 32, 16)
        common = ["segment-video", str(clip), "--out", str(tmp_path / "o.mp4"), "--url",
                  running.grpc_url, "--ssl", "--root-cert", str(cert), "--quiet"]  # fmt: skip
        done = cycada(*common, "--auth-secret-file", str(secret_file))
        assert done.returncode == 0, done.stderr
        done = cycada(*common, "--auth-header", "cycada-auth s3cret")
        assert done.returncode == 2 and "s3cret" not in done.stderr + done.stdout


def test_a_network_host_needs_tls_and_a_secret_or_insecure(repository):
    with pytest.raises(ConfigError, match="reachable from the network: give --tls-cert"):
        TritonServer(options(repository, host="0.0.0.0"))
    with pytest.raises(ConfigError, match="--tls-cert and --tls-key go together"):
        TritonServer(options(repository, tls_cert=Path("cert.pem")))
    from cycada.serving.server import server_command

    insecure = options(repository, host="0.0.0.0", insecure=True)
    command = " ".join(server_command(TritonServer(insecure).home, insecure))
    assert "--grpc-address=0.0.0.0" in command and "--http-address=127.0.0.1" in command
    admin = "shared-memory,model-repository,trace,logging"  # inference open, admin locked
    assert f"--grpc-restricted-protocol={admin}:cycada-auth=" in command


def test_doctor_reports_the_machine_and_the_engine_of_each_model(repository, capsys):
    from cycada.cli import main

    assert main(["doctor", "--repository", str(repository)]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime providers" in out and "CPUExecutionProvider" in out
    assert "tritonserver" in out and "cuda" in out
    # no GPU here: the exported ONNX graph runs on ONNX Runtime's CPU provider
    assert "model segment " in out and "onnxruntime on CPUExecutionProvider" in out
    assert "model segment_encoded" in out and "decodes frames" in out
