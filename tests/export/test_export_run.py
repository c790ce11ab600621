"""`cycada export` on a run folder: parity table, loud failure on a missed bound, bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from cycada.benchmarks.served import random_run
from cycada.errors import CheckpointError, ExportError
from cycada.export import parity
from cycada.export.exporter import ExportOptions, export_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return random_run("fastscnn", tmp_path_factory.mktemp("run"))


def test_export_writes_checked_graphs_and_a_passing_table(run_dir, tmp_path):
    report = export_run(run_dir, tmp_path, ExportOptions(fp16=False, simplify=True), print)
    onnx_rows = [row for row in report.rows if row.variant == "onnx-fp32"]
    assert [row.metric for row in onnx_rows] == [
        "label agreement",
        "confidence within 2/255",
        "logits max abs diff",
    ]
    assert all(row.ok for row in report.rows)
    assert "| segment | onnx-fp32 | label agreement |" in report.table()
    model = onnx.load(str(tmp_path / "segment" / "1" / "model.onnx"))
    assert model.opset_import[0].version >= 17
    assert [i.name for i in model.graph.input] == ["images"]
    session = ort.InferenceSession(str(tmp_path / "segment" / "1" / "model.onnx"))
    labels, confidence = session.run(None, {"images": np.zeros((3, 50, 70, 3), np.uint8)})
    assert labels.shape == confidence.shape == (3, 50, 70) and labels.dtype == np.uint8


def test_a_missed_parity_bound_fails_loudly_and_writes_nothing(tmp_path, monkeypatch):
    run = random_run("fastscnn", tmp_path / "run", generators="resnet6")
    monkeypatch.setattr(parity, "GREY_SHARE", 1.01)  # the generators' bound: none can meet it
    with pytest.raises(ExportError, match="parity bound missed: translate_s2t onnx-fp32"):
        export_run(run, tmp_path / "repo", ExportOptions(fp16=False), lambda _: None)
    # the segment models exported before the failure were taken back: all or nothing
    versions = [p for p in (tmp_path / "repo").rglob("*") if p.is_dir() and p.name.isdigit()]
    assert versions == []


def test_bad_run_folders_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        export_run(tmp_path / "missing", tmp_path / "repo")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no finished task model"):
        export_run(tmp_path / "empty", tmp_path / "repo")
    done = subprocess.run(
        [sys.executable, "-m", "cycada.cli", "export", str(tmp_path / "empty")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no finished task model" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "cycada.cli", "export", str(tmp_path / "empty"), "--instances", "0"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2  # the input is wrong
    assert done.stderr.strip() == "cycada: error: --instances 0: expected 1 or more"


def test_a_repository_that_is_a_file_is_one_line_and_left_alone(run_dir, tmp_path):
    from tests.helpers import cycada, one_line_error

    (tmp_path / "repo").write_text("mine")
    done = cycada("export", str(run_dir), "--repository", str(tmp_path / "repo"))
    one_line_error(done, f"--repository {tmp_path / 'repo'}: expected a folder, found a file")
    assert (tmp_path / "repo").read_text() == "mine"


def test_concurrent_exports_take_one_version_each(run_dir, tmp_path):
    import json
    import threading

    errors = []

    def export():
        try:
            export_run(run_dir, tmp_path / "repo", ExportOptions(fp16=False), lambda _: None)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=export) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for version in ("1", "2"):
        folder = tmp_path / "repo" / "segment" / version
        assert (folder / "model.onnx").exists()
        assert json.loads((folder / "endpoint.json").read_text())["version"] == int(version)
    assert not list((tmp_path / "repo").glob("*/.*")), "staging left in a model folder"
    assert not (tmp_path / ".repo.export").exists(), "staging left beside the repository"


def test_a_full_disk_during_export_leaves_the_previous_version(tmp_path, monkeypatch):
    from cycada.export import exporter

    run_dir = random_run("fastscnn", tmp_path / "run", generators="resnet6")
    repo = tmp_path / "repo"
    original, state = exporter.publish, {"calls": 0, "fail_at": 2}

    def disk_fills_up(staged):
        state["calls"] += 1
        if state["calls"] == state["fail_at"]:  # the first model's version is already there
            raise OSError(28, "No space left on device")
        return original(staged)

    monkeypatch.setattr(exporter, "publish", disk_fills_up)
    with pytest.raises(ExportError, match="No space left on device.*repository is as it was"):
        export_run(run_dir, repo, ExportOptions(fp16=False), lambda _: None)
    assert [p.name for p in repo.iterdir()] == [".export.lock"]  # the model it added went too
    state["fail_at"] = 0
    export_run(run_dir, repo, ExportOptions(fp16=False), lambda _: None)
    configs = {p: p.read_text() for p in repo.rglob("*.pbtxt")}
    state.update(calls=0, fail_at=2)
    with pytest.raises(ExportError, match="No space left on device.*repository is as it was"):
        export_run(run_dir, repo, ExportOptions(fp16=False), lambda _: None)
    for model in ("segment", "segment_encoded", "translate_s2t", "translate_t2s"):
        folders = sorted(p.name for p in (repo / model).iterdir() if p.is_dir())
        assert [f for f in folders if f.isdigit()] == ["1"], (model, folders)
    assert {p: p.read_text() for p in repo.rglob("*.pbtxt")} == configs
    assert not (tmp_path / ".repo.export").exists()


def test_compiled_package_is_checked_against_onnx_loaded_fast_and_falls_back(tmp_path):
    """`cycada export --compile` on CPU: an AOTInductor package with parity against the ONNX
    graph, the faster engine recorded; the PyTorch engine loads it, and serves eager with a
    log line when it was built for another machine."""
    import json

    from cycada.serving.engines import TorchEngine
    from cycada.training.digits.pipeline import run_digits
    from tests.helpers import tiny_digits_config

    run = tmp_path / "run"
    config = tiny_digits_config("synth", "pixel.enabled=false", "feature.enabled=false")
    run_digits(config, run, quiet=True)
    report = export_run(run, tmp_path / "repo", ExportOptions(fp16=False, compile=True), print)
    rows = [row for row in report.rows if row.variant == "aoti-cpu-fp32"]
    assert rows and all(row.ok for row in rows)
    version = tmp_path / "repo" / "classify_digits" / "1"
    info = json.loads((version / "compiled.json").read_text())
    assert info["device"] == "cpu" and info["torch"] == torch_version()
    choice = json.loads((version / "engine_choice.json").read_text())
    assert {"pytorch", "onnxruntime"} <= set(choice["timings_ms"])  # (and OpenVINO's)
    engine = TorchEngine(version, "cpu", half=False)
    assert engine.name.startswith("aoti package")
    digits = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 3), np.uint8)
    class_ids = engine.run(digits, ["class_ids"])[0].numpy()
    expected = parity.onnx_runner(version / "model.onnx")(digits)[0]
    np.testing.assert_array_equal(class_ids, expected)
    info["torch"] = "0.0.1"  # as if built elsewhere
    (version / "compiled.json").write_text(json.dumps(info))
    fallback = TorchEngine(version, "cpu", half=False)
    assert fallback.name.startswith("pytorch (cpu")
    np.testing.assert_array_equal(fallback.run(digits, ["class_ids"])[0].numpy(), expected)
    # the `eager` engine parameter never loads the package (the bench compares the two)
    from cycada.serving.engines import select_engine

    eager = select_engine(version, {"engine": "eager"}, "CPU", 0)
    assert eager.name == "pytorch (cpu, fp32)"


def test_no_cpu_engines_skips_openvino_and_the_timing(run_dir, tmp_path):
    import os

    env = {**os.environ, "CYCADA_EXPORT_CPU_ENGINES": "1"}  # the users' default
    command = [sys.executable, "-m", "cycada.cli", "export", str(run_dir), "--no-fp16"]
    command += ["--repository", str(tmp_path / "repo"), "--no-cpu-engines"]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    version = tmp_path / "repo" / "segment" / "1"
    assert (version / "model.onnx").is_file()
    assert not (version / "model.openvino.xml").exists()
    assert not (version / "engine_choice.json").exists()


def torch_version() -> str:
    import torch

    return torch.__version__


def test_a_second_export_of_the_same_weights_comes_from_the_graph_cache(
    run_dir, tmp_path, monkeypatch
):
    from cycada.export import graph_cache, onnx_export
    from cycada.export.run_models import load_run_endpoints

    monkeypatch.setenv("CYCADA_CACHE_DIR", str(tmp_path / "cache"))
    export_run(run_dir, tmp_path / "a", ExportOptions(fp16=False), lambda _: None)
    # one trace: the graph with logits; the served graph is that graph without the output
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1
    traced, trace = [], onnx_export._export_checked
    monkeypatch.setattr(onnx_export, "_export_checked", lambda *a: traced.append(a) or trace(*a))
    report = export_run(run_dir, tmp_path / "b", ExportOptions(fp16=False), lambda _: None)
    assert traced == [] and all(row.ok for row in report.rows)
    graph = "segment/1/model.onnx"
    assert (tmp_path / "a" / graph).read_bytes() == (tmp_path / "b" / graph).read_bytes()
    # other weights, or the cache turned off, trace again (recorded, not run: a trace is 15 s)
    endpoint = load_run_endpoints(run_dir)[0]
    key = graph_cache.graph_key(endpoint.network, {"kind": "segment"})
    with torch.no_grad():
        next(endpoint.network.parameters()).add_(1.0)
    assert graph_cache.graph_key(endpoint.network, {"kind": "segment"}) != key
    monkeypatch.setattr(onnx_export, "_export_checked", lambda *a: traced.append(a))
    onnx_export.export_onnx(endpoint, tmp_path / "c.onnx", logits=True, cache=False)
    assert len(traced) == 1


def test_cuda_graphs_become_the_default_only_for_a_clear_gain():
    """Measured on an H200: 7.46 → 7.00 ms with CUDA graphs on one frame did not carry over to
    the batching server; graphs are the recorded default only when 10 % faster."""
    from cycada.export.compiled import choose_engine

    h200 = {
        "eager": 7.459,
        "eager+cuda_graphs": 6.995,
        "pytorch": 9.656,
        "pytorch+cuda_graphs": 9.7,
    }
    assert choose_engine(h200) == "eager"
    assert choose_engine({**h200, "eager+cuda_graphs": 6.0}) == "eager+cuda_graphs"
    assert choose_engine({**h200, "pytorch": 5.0, "pytorch+cuda_graphs": 4.9}) == "pytorch"
    assert choose_engine({"pytorch": 33.1, "onnxruntime": 27.2}) == "onnxruntime"


def test_doctor_and_the_server_run_the_engine_the_export_measured(tmp_path):
    """engine_choice.json (written by `export --compile`) decides what `auto` runs, in the
    server and in `cycada doctor`'s report alike; a choice measured on another kind of device
    is ignored."""
    import json

    from cycada.doctor import repository_report
    from cycada.serving.engines import select_engine

    run = random_run("fastscnn", tmp_path / "run")
    repo = tmp_path / "repo"
    export_run(run, repo, ExportOptions(onnx=False), lambda _: None)
    folder = repo / "segment" / "1"
    (folder / "model.onnx").write_bytes(b"")  # as if ONNX were there: auto would pick ORT
    choice = {"default_engine": "eager", "cuda_graphs": False, "device": "cpu"}
    (folder / "engine_choice.json").write_text(json.dumps(choice))
    assert select_engine(folder, {}, "CPU", 0).name == "pytorch (cpu, fp32)"
    report = dict(repository_report(repo))
    assert "pytorch on cpu (fastest at export: eager)" in report["segment"]
    (folder / "engine_choice.json").write_text(json.dumps({**choice, "device": "cuda"}))
    assert "fastest at export" not in dict(repository_report(repo))["segment"]
