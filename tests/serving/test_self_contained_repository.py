"""An exported repository serves as NVIDIA's Triton container would serve it: the tritonserver
binary started directly, its Python-backend stub on a Python that has NumPy and nothing else
(no cycada, ONNX Runtime or OpenCV on any path), preferably the container's Python 3.10."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from cycada.export.parity import onnx_runner, scene_images
from cycada.export.repository import PROFILES, config_path, versions
from cycada.export.runtime import CONTAINER_PYTHON
from cycada.serving.server import ServerOptions, TritonServer
from cycada.serving.server_install import find_tritonserver
from tests.helpers import (
    DirectServer,
    StubEnvironment,
    in_spawned_child,
    openvino_signature,
    served_copy,
    served_engine_outputs,
    skip_without_tritonserver,
)

pytestmark = [pytest.mark.slow, pytest.mark.server]

skip_without_tritonserver()

MODELS = ("segment", "segment_encoded", "translate_s2t", "translate_t2s")
ONNX_TYPES = {onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.FLOAT: "TYPE_FP32"}
OPENVINO_TYPES = {"u8": "TYPE_UINT8", "f32": "TYPE_FP32"}


@pytest.fixture(scope="module")
def repository(tmp_path_factory, exported_repository):
    return served_copy(exported_repository, tmp_path_factory.mktemp("self_contained"))


def _python_with_libpython(python: str) -> tuple[str, Path] | None:
    """(X.Y, LIBDIR) of an interpreter whose shared libpython the stub can link, or None."""
    probe = (
        "import sys, sysconfig; print('%d.%d' % sys.version_info[:2]); "
        "print(sysconfig.get_config_var('LIBDIR')); print(sysconfig.get_config_var('LDLIBRARY'))"
    )
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return None
    version, libdir, library = done.stdout.split()
    return (
        (version, Path(libdir)) if (Path(libdir) / library).is_file() and ".so" in library else None
    )


@pytest.fixture(scope="module")
def numpy_only_stub(tmp_path_factory):
    """(Python version, StubEnvironment) of a Python-backend stub whose Python has only NumPy
    <2: NVIDIA's container's Python 3.10 when this machine has one, else this Python."""
    candidates = [shutil.which(f"python{CONTAINER_PYTHON}")]
    candidates += sorted(
        glob.glob(os.path.expanduser(f"~/.pyenv/versions/{CONTAINER_PYTHON}*/bin/python3"))
    )
    candidates.append(getattr(sys, "_base_executable", sys.executable))
    found = next(filter(None, (_python_with_libpython(c) for c in candidates if c)), None)
    if found is None:
        pytest.skip("no Python with a shared libpython for the backend stub")
    version, libdir = found
    python = next(c for c in candidates if c and _python_with_libpython(c) == found)
    folder = tmp_path_factory.mktemp("numpy_only_stub")
    subprocess.run([python, "-m", "venv", str(folder / "env")], check=True)
    pip = [str(folder / "env/bin/python"), "-m", "pip", "install", "-q", "numpy<2"]
    subprocess.run(pip, check=True, capture_output=True)
    home = find_tritonserver()
    backend = folder / "backends" / "python"
    backend.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(home.backends / "python" / name, backend / name)
    stub = home.root / "python_backend_stubs" / version / "triton_python_backend_stub"
    shutil.copy2(stub, backend / stub.name)
    path = f"{folder / 'env/bin'}:/usr/bin:/bin"
    check = subprocess.run(
        ["python", "-c", "import cycada"],
        env={"PATH": path},
        cwd=folder,
        capture_output=True,
        text=True,
    )
    assert check.returncode != 0 and "No module named 'cycada'" in check.stderr
    return version, StubEnvironment(folder / "backends", path, f"{home.libraries}:{libdir}")


def _infer(url: str, model: str, array: np.ndarray, name: str = "images") -> dict:
    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput(name, list(array.shape), "UINT8")
    tensor.set_data_from_numpy(array)
    result = client.infer(model, [tensor])
    outputs = result.get_response().outputs
    return {output.name: result.as_numpy(output.name) for output in outputs}


def _answers(url: str) -> dict:
    image = scene_images(count=1, width=160)[0]
    ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return {
        "segment": _infer(url, "segment", image[None]),
        "segment_encoded": _infer(url, "segment_encoded", png.reshape(1, -1), "frames"),
        "translate_s2t": _infer(url, "translate_s2t", image[None]),
        "translate_t2s": _infer(url, "translate_t2s", image[None]),
    }


def test_every_model_serves_on_a_numpy_only_stub_as_under_cycada_serve(repository, numpy_only_stub):
    direct = DirectServer(repository, numpy_only_stub[1])
    try:
        bare = _answers(f"127.0.0.1:{direct.grpc}")
    finally:
        direct.stop()
    with TritonServer(ServerOptions.on_free_ports(repository, poll_seconds=0)) as served:
        ours = _answers(served.grpc_url)
    for model in MODELS:
        assert bare[model].keys() == ours[model].keys() and bare[model], model
        for name, array in ours[model].items():
            np.testing.assert_array_equal(bare[model][name], array, err_msg=f"{model} {name}")
    info = json.loads((repository / "segment" / "1" / "endpoint.json").read_text())
    assert info["runtime"]["cycada"] and numpy_only_stub[0] in info["runtime"]["python"]


def test_the_native_profiles_load_what_they_can_here(repository, numpy_only_stub):
    """tensorrt without plans: every model falls back to its Python config and loads;
    onnxruntime and openvino: the encoded-frame model (Python in every profile) loads and
    answers (the native backends exist only in NVIDIA's container)."""
    direct = DirectServer(repository, numpy_only_stub[1], "--model-config-name=tensorrt")
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{direct.grpc}")
        assert all(client.is_model_ready(model) for model in MODELS)
    finally:
        direct.stop()
    only = ["--model-control-mode=explicit", "--load-model=segment_encoded"]
    for profile in ("onnxruntime", "openvino"):
        direct = DirectServer(
            repository, numpy_only_stub[1], f"--model-config-name={profile}", *only
        )
        try:
            image = scene_images(count=1, width=96)[0]
            ok, jpeg = cv2.imencode(".jpg", image)
            url = f"127.0.0.1:{direct.grpc}"
            labels = _infer(url, "segment_encoded", jpeg.reshape(1, -1), "frames")["labels"]
            assert labels.shape == (1, *image.shape[:2]), profile
        finally:
            direct.stop()


def test_every_model_has_a_config_that_loads_in_every_profile(repository):
    """Model x profile: the config Triton picks (configs/P.pbtxt, else config.pbtxt) parses, and
    what it names is in every served version: a Python model's runtime for the exported
    Pythons; a native model's file, with the graph's inputs and outputs as the config says."""
    for model in MODELS:
        model_dir = repository / model
        for profile in PROFILES:
            path = config_path(model_dir, profile)
            path = path if path.exists() else config_path(model_dir, "default")
            config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
            for version in versions(model_dir):
                folder = model_dir / str(version)
                if config.backend == "python":
                    runtime = json.loads((folder / "endpoint.json").read_text())["runtime"]
                    assert (folder / "model.py").is_file(), (model, profile)
                    for python in runtime["python"]:
                        packages = model_dir / runtime["folder"] / f"py{python.replace('.', '')}"
                        assert (packages / "onnxruntime").is_dir(), (model, profile, python)
                        chosen = folder / "engine_choice.json"
                        engine = json.loads(chosen.read_text()) if chosen.exists() else {}
                        openvino = engine.get("default_engine", "").startswith("openvino")
                        assert (packages / "openvino").is_dir() == openvino, (model, python)
                        assert (packages / "cv2").is_dir() == (model == "segment_encoded")
                elif config.backend == "onnxruntime":
                    graph = onnx.load(str(folder / config.default_model_filename))
                    for wanted, actual in ((config.input, graph.graph.input),
                                           (config.output, graph.graph.output)):  # fmt: skip
                        assert [t.name for t in wanted] == [t.name for t in actual]
                        types = [ONNX_TYPES[t.type.tensor_type.elem_type] for t in actual]
                        names = [model_config_pb2.DataType.Name(t.data_type) for t in wanted]
                        assert names == types, (model, profile)
                elif config.backend == "openvino":  # the conversion, as the config says
                    path = folder / config.default_model_filename
                    signature = in_spawned_child(openvino_signature, path)
                    for wanted, actual in zip((config.input, config.output), signature):
                        assert [t.name for t in wanted] == [name for name, _ in actual]
                        names = [model_config_pb2.DataType.Name(t.data_type) for t in wanted]
                        types = [OPENVINO_TYPES[kind] for _, kind in actual]
                        assert names == types, (model, profile)
                else:
                    assert config.platform == "tensorrt_plan"
                    assert (folder / config.default_model_filename).is_file()


def _check_the_cpu_engine_choice(report, repo: Path) -> None:
    """Without CUDA and with OpenVINO installed, the export converted the graph for OpenVINO,
    checked its labels and confidence, timed it beside ONNX Runtime on a frame of the run's
    width, wrote the openvino profile's config, and the Python backend's `auto` engine serves
    what engine_choice.json names."""
    rows = [row for row in report.rows if row.endpoint == "segment" and row.variant == "openvino"]
    assert [row.metric for row in rows] == ["label agreement", "confidence within 2/255"]
    assert all(row.ok for row in rows)
    version = repo / "segment" / "1"
    assert (version / "model.openvino.xml").is_file() and (version / "model.openvino.bin").is_file()
    assert (repo / "segment" / "configs" / "openvino.pbtxt").is_file()
    choice = json.loads((version / "engine_choice.json").read_text())
    assert {"onnxruntime", "openvino"} <= set(choice["timings_ms"])
    fastest = min(choice["timings_ms"], key=choice["timings_ms"].get)
    assert choice["default_engine"] == fastest
    frames = np.random.default_rng(0).integers(0, 256, (2, 45, 70, 3), np.uint8)
    served = in_spawned_child(served_engine_outputs, version, frames)  # no OpenVINO in here
    assert served["engine"] == (
        "OpenVinoEngine" if fastest.startswith("openvino") else "OnnxEngine"
    )
    openvino = in_spawned_child(served_engine_outputs, version, frames, {"engine": "openvino"})
    assert openvino["engine"] == "OpenVinoEngine"
    expected = onnx_runner(version / "model.onnx")(frames)
    assert openvino["labels"].shape == (2, 45, 70)
    assert (openvino["labels"] == expected[0]).mean() >= 0.999
    assert np.abs(openvino["confidence"].astype(int) - expected[1]).max() <= 2


def test_a_model_that_chose_openvino_serves_on_a_numpy_only_stub(tmp_path, numpy_only_stub):
    """The export's CPU engine choice (OpenVINO, carried in the model's runtime) answers on a
    stub whose Python has only NumPy, as the in-process engine does."""
    import importlib.util

    import torch

    from cycada.benchmarks.served import random_run
    from cycada.export.exporter import ExportOptions, export_run

    if importlib.util.find_spec("openvino") is None or torch.cuda.is_available():
        pytest.skip("needs OpenVINO (cycada[cpu]) on a host without CUDA")
    run = random_run("fastscnn", tmp_path / "run", generators="resnet6")
    repo = tmp_path / "repo"
    report = export_run(run, repo, ExportOptions(fp16=False, cpu_engines=True), log=lambda _: None)
    _check_the_cpu_engine_choice(report, repo)
    chose = [
        model
        for model in MODELS
        if json.loads((repo / model / "1" / "engine_choice.json").read_text())
        .get("default_engine", "")
        .startswith("openvino")
    ]
    if not chose:  # the timing decides: ResNet-6 generators ran 1.8-3x faster in OpenVINO
        pytest.skip("no model measured faster with OpenVINO on this machine")
    direct = DirectServer(repo, numpy_only_stub[1])
    try:
        answers = _answers(f"127.0.0.1:{direct.grpc}")
    finally:
        direct.stop()
    image = scene_images(count=1, width=160)[0][None]
    for model in chose:
        runtime = json.loads((repo / model / "1" / "endpoint.json").read_text())["runtime"]
        packages = repo / model / runtime["folder"] / f"py{numpy_only_stub[0].replace('.', '')}"
        assert (packages / "openvino").is_dir(), model
        if model == "segment_encoded":
            continue  # decodes first: its answers are checked against segment's elsewhere
        expected = in_spawned_child(served_engine_outputs, repo / model / "1", image)
        assert expected.pop("engine") == "OpenVinoEngine"
        for name, array in expected.items():
            np.testing.assert_array_equal(answers[model][name], array, err_msg=f"{model} {name}")
