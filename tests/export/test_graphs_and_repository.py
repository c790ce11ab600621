"""Serving graphs (uint8 in, uint8 out, any size) and the model repository's configs/versions."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from cycada.export.repository import PROFILES, config_text, spec_for, versions, write_model
from cycada.export.runtime import RuntimeBuilder
from cycada.models.digit_networks import build_task_net
from cycada.models.generators import build_generator
from cycada.models.graphs import (
    DigitGraph,
    PlainSegmentationGraph,
    SegmentationGraph,
    TranslationGraph,
)
from cycada.models.segmenters import build_segmenter


@pytest.mark.parametrize("height,width", [(37, 61), (64, 64), (1, 9)])
def test_segmentation_graph_pads_inside_and_equals_the_plain_definition(height, width):
    net = build_segmenter("fastscnn", 19).eval()
    torch.manual_seed(0)
    for p in net.classifier[-1].parameters():  # spread the class scores like a trained head
        p.data.normal_(0, 3)
    graph = SegmentationGraph(net, net.output_stride, logits=True).eval()
    images = torch.randint(0, 256, (2, height, width, 3), dtype=torch.uint8)
    with torch.no_grad():
        labels, confidence, scores = graph(images)
        plain_labels, plain_confidence = PlainSegmentationGraph(net, net.output_stride)(images)
    assert labels.dtype == torch.uint8 and labels.shape == (2, height, width)
    assert confidence.dtype == torch.uint8 and confidence.shape == (2, height, width)
    assert scores.shape[:2] == (2, 19)  # the network's own resolution
    assert (labels == plain_labels).float().mean() >= 0.999
    assert (confidence.int() - plain_confidence.int()).abs().max() <= 1


def test_translation_graph_keeps_size_and_range():
    gen = build_generator("resnet6", 3, 3, 8).eval()
    images = torch.randint(0, 256, (1, 30, 45, 3), dtype=torch.uint8)
    with torch.no_grad():
        out = TranslationGraph(gen, gen.stride)(images)
    assert out.dtype == torch.uint8 and out.shape == (1, 30, 45, 3)


def test_digit_graph_accepts_any_size_and_gives_probabilities():
    net = build_task_net("lenet", 10).eval()
    with torch.no_grad():
        ids, probabilities = DigitGraph(net)(torch.zeros(5, 16, 16, 1, dtype=torch.uint8))
    assert ids.shape == (5, 1) and ids.dtype == torch.uint8
    assert probabilities.shape == (5, 10)
    np.testing.assert_allclose(probabilities.sum(1).numpy(), 1.0, rtol=1e-5)


@pytest.mark.parametrize("kind", ["segment", "translate", "classify", "encoded"])
@pytest.mark.parametrize("profile", PROFILES)
def test_every_config_parses_as_a_triton_model_config(kind, profile):
    spec = spec_for(f"m_{kind}", kind, 3, 19)
    config = text_format.Parse(config_text(spec, profile), model_config_pb2.ModelConfig())
    assert config.name == f"m_{kind}" and config.max_batch_size >= 1
    assert config.version_policy.latest.num_versions == 2
    # no batching delay and two instances: one instance and a delay stall requests on Triton's
    # 500 ms batcher timeout (export/repository.py, INSTANCES)
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    assert [group.count for group in config.instance_group] == [2]
    native = profile != "default" and kind != "encoded"
    backends = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": ""}
    assert config.backend == (backends[profile] if native else "python")
    on_gpu = native and profile != "openvino"
    assert [g.kind for g in config.instance_group] == [
        model_config_pb2.ModelInstanceGroup.KIND_GPU
        if on_gpu
        else model_config_pb2.ModelInstanceGroup.KIND_CPU
    ]
    if profile == "openvino" and native:
        assert config.default_model_filename == "model.openvino.xml"
    if profile == "tensorrt" and native:
        assert config.platform == "tensorrt_plan"
    if profile == "onnxruntime" and native:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
        assert accelerator.name == "tensorrt"
        assert accelerator.parameters["precision_mode"] == "FP16"
    if kind != "encoded":
        assert config.input[0].data_type == model_config_pb2.TYPE_UINT8
        assert list(config.input[0].dims) == [-1, -1, 3]
        assert len(config.model_warmup) == 1


@pytest.fixture(scope="module")
def code_only():
    """The runtime of these fake models: the cycada code, no packages (nothing serves them)."""
    builder = RuntimeBuilder([])
    yield builder
    builder.close()


def onnx_only(folder: Path) -> None:
    (folder / "model.onnx").write_bytes(b"x")


def test_versions_are_added_and_pruned_with_the_runtimes_no_version_names(tmp_path, code_only):
    spec = spec_for("segment", "segment", 3, 19)
    for _ in range(4):
        write_model(tmp_path, spec, onnx_only, {}, code_only, keep=3)
    model = tmp_path / "segment"
    assert versions(model) == [2, 3, 4]
    assert (model / "4" / "model.py").read_text().count("ImageModel") == 1
    (runtime,) = (model / "runtime").iterdir()  # one runtime: the versions share its code
    assert (runtime / "code" / "cycada" / "serving" / "python_model.py").is_file()
    # no plan in the version: the tensorrt profile falls back to the Python config
    assert sorted(p.name for p in (model / "configs").iterdir()) == ["onnxruntime.pbtxt"]
    write_model(tmp_path, spec, lambda d: (d / "model.plan").write_bytes(b"x"), {}, code_only)
    assert sorted(p.name for p in (model / "configs").iterdir()) == ["tensorrt.pbtxt"]
    (model / "runtime" / "0123456789abcdef").mkdir()  # an older export's, named by no version
    write_model(tmp_path, spec, onnx_only, {}, code_only, keep=3)
    assert [p.name for p in (model / "runtime").iterdir()] == [runtime.name]


def test_a_failed_export_leaves_the_repository_as_it_was(tmp_path, code_only):
    spec = spec_for("segment", "segment", 3, 19)
    write_model(tmp_path, spec, onnx_only, {}, code_only)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))

    def broken(folder):
        (folder / "model.onnx").write_bytes(b"half")
        raise RuntimeError("parity bound missed")

    with pytest.raises(RuntimeError):
        write_model(tmp_path, spec, broken, {}, code_only)
    assert versions(tmp_path / "segment") == [1]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_a_version_is_published_readable_by_others_and_fsynced_before_its_rename(
    tmp_path, code_only, monkeypatch
):
    """Modes from the umask (a server running as another user reads the files; temporary files
    are 0600), and nothing renamed into place before its files reached the disk: a new model as
    its whole folder, a new version as its folder."""
    events: list[tuple[str, str]] = []
    real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rename(source, target):
        events.append(("rename", str(target)))
        return real_rename(source, target)

    def replace(source, target):
        events.append(("rename", str(target)))
        return real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    spec = spec_for("segment", "segment", 3, 19)
    old_umask = os.umask(0o027)
    try:
        write_model(tmp_path, spec, onnx_only, {}, code_only)
        write_model(tmp_path, spec, onnx_only, {}, code_only)
    finally:
        os.umask(old_umask)
    model = tmp_path / "segment"
    for path in [model, model / "1", *(model / "2").iterdir(), model / "config.pbtxt"]:
        assert path.stat().st_mode & 0o777 == (0o750 if path.is_dir() else 0o640), path
    for target, written in [(model, "config.pbtxt"), (model / "2", "model.py")]:
        published = next(i for i, e in enumerate(events) if e == ("rename", str(target)))
        synced = {path.rsplit("/", 1)[-1] for op, path in events[:published] if op == "fsync"}
        assert {"model.onnx", "endpoint.json", written} <= synced
        assert events[published + 1] == ("fsync", str(target.parent))  # the rename made durable
        del events[: published + 1]


def test_committed_configs_are_what_export_writes():
    repo = Path(__file__).resolve().parents[2] / "model_repository"
    kinds = {
        "segment": "segment",
        "segment_encoded": "encoded",
        "translate_s2t": "translate",
        "translate_t2s": "translate",
    }
    from cycada.training.segmentation.label_spaces import CITYSCAPES19

    for name, kind in kinds.items():
        names = CITYSCAPES19.classes if kind in ("segment", "encoded") else ()
        spec = spec_for(name, kind, 3, 19, names)
        for profile in PROFILES:
            path = (
                repo
                / name
                / ("config.pbtxt" if profile == "default" else f"configs/{profile}.pbtxt")
            )
            assert path.read_text() == config_text(spec, profile), path


def test_native_configs_agree_with_the_export_options_that_produced_them():
    """The tensorrt profile's batch and warm-up lie inside the plan's optimization profile
    (from --trt-max-batch / --trt-sizes; digits at their own size, batches of 256), and the
    onnxruntime profile keeps TensorRT engines in a cache across starts."""
    from cycada.export.repository import NativeProfile, plan_profile

    native = NativeProfile(max_batch=4, shapes=((128, 256), (256, 512)))
    parse = model_config_pb2.ModelConfig
    segment = text_format.Parse(
        config_text(spec_for("s", "segment", 3, 19), "tensorrt", native), parse()
    )
    assert segment.max_batch_size == 4 == plan_profile("segment", native)[0]
    warmup = segment.model_warmup[0]
    assert warmup.batch_size <= 4 and list(warmup.inputs["images"].dims) == [128, 256, 3]
    digits = text_format.Parse(
        config_text(spec_for("d", "classify", 1, 10), "tensorrt", native), parse()
    )
    max_batch, (low, _, high) = plan_profile("classify", native)
    assert digits.max_batch_size == max_batch == 256 and low == high == (28, 28)
    assert list(digits.model_warmup[0].inputs["images"].dims) == [28, 28, 1]
    ort = config_text(spec_for("s", "segment", 3, 19), "onnxruntime", native)
    assert '"trt_engine_cache_enable" value: "true"' in ort and "/tmp/cycada-trt-cache/s" in ort


def test_dropping_the_logits_output_keeps_the_served_outputs_and_removes_only_its_branch():
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from cycada.export.onnx_export import drop_output

    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [2.0])
    unused = helper.make_tensor("bias", TensorProto.FLOAT, [1], [5.0])
    nodes = [
        helper.make_node("Mul", ["x", "w"], ["scaled"]),
        helper.make_node("Relu", ["scaled"], ["labels"]),
        helper.make_node("Add", ["scaled", "bias"], ["shifted"]),
        helper.make_node("Neg", ["shifted"], ["logits"]),
    ]
    value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [2])  # noqa: E731
    graph = helper.make_graph(
        nodes, "g", [value("x")], [value("labels"), value("logits")], [weight, unused]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    served = drop_output(model, "logits")
    onnx.checker.check_model(served, full_check=True)
    assert [o.name for o in served.graph.output] == ["labels"]
    assert [n.op_type for n in served.graph.node] == ["Mul", "Relu"]
    assert [i.name for i in served.graph.initializer] == ["w"]
    assert len(model.graph.node) == 4  # the original is left as it was
    session = ort.InferenceSession(served.SerializeToString())
    out = session.run(None, {"x": np.array([-1.0, 3.0], np.float32)})[0]
    np.testing.assert_array_equal(out, [0.0, 6.0])


def test_the_instance_count_is_the_exports_choice():
    spec = spec_for("m_segment", "segment", 3, 19)
    for profile in PROFILES:
        config = text_format.Parse(
            config_text(spec, profile, instances=1), model_config_pb2.ModelConfig()
        )
        assert [group.count for group in config.instance_group] == [1]


def test_an_export_that_died_between_models_is_removed_by_the_next(tmp_path, code_only):
    """Export "b" wrote segment's version 2 and died before translate_s2t's: the next export
    (under the repository lock) removes it, so every model is at export "a" again. A later
    export of fewer models (segment alone) is whole and stays."""
    from cycada.export.repository import repair_incomplete_export

    def export(name: str, id_: str, models: list[str]) -> None:
        spec = spec_for(name, "segment" if name == "segment" else "translate", 3, 19)
        info = {"export": {"id": id_, "models": models}}
        write_model(tmp_path, spec, onnx_only, info, code_only)

    both = ["segment", "translate_s2t"]
    export("segment", "a", both)
    export("translate_s2t", "a", both)
    export("segment", "b", both)  # ... killed here
    repair_incomplete_export(tmp_path, log=lambda _: None)  # what the next export does first
    assert versions(tmp_path / "segment") == [1] and versions(tmp_path / "translate_s2t") == [1]
    export("segment", "c", ["segment"])
    repair_incomplete_export(tmp_path, log=lambda _: None)
    assert versions(tmp_path / "segment") == [1, 2]


def test_resize_before_channels_last_is_rewritten_to_resize_channels_last():
    """The served graph resizes (N, H, W, C): same result, ONNX Runtime's faster kernel."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from cycada.export.onnx_export import resize_channels_last

    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Mul", ["shape", "factors"], ["sizes"]),
        helper.make_node("Resize", ["x", "", "", "sizes"], ["up"], mode="linear"),
        helper.make_node("Transpose", ["up"], ["y"], perm=[0, 2, 3, 1]),
    ]
    factors = helper.make_tensor("factors", TensorProto.INT64, [4], [1, 1, 8, 8])
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 19, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "a", "b", 19])],
        [factors],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = np.random.default_rng(0).normal(size=(2, 19, 5, 7)).astype(np.float32)

    def run(m):
        return ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]

    expected = run(model)
    rewritten = resize_channels_last(onnx.load_from_string(model.SerializeToString()))
    onnx.checker.check_model(rewritten, full_check=True)
    resize = next(n for n in rewritten.graph.node if n.op_type == "Resize")
    reader = {o: n for n in rewritten.graph.node for o in n.output}[resize.input[0]]
    assert reader.op_type == "Transpose" and resize.output == ["y"]
    np.testing.assert_allclose(run(rewritten), expected, atol=1e-5)
    assert expected.shape == (2, 40, 56, 19)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its mtime and ctime: what a polling Triton compares."""
    return {
        str(path.relative_to(folder)): (path.lstat().st_mtime_ns, path.lstat().st_ctime_ns)
        for path in [folder, *folder.rglob("*")]
    }


def test_a_staged_version_changes_nothing_in_the_repository_until_it_is_published(
    tmp_path, code_only
):
    """An export builds its models beside the repository (a polling server reloads a model when
    anything under its folder changes): the repository is untouched, to the file times, until
    publish; a model folder stages its own where the repository's parent cannot."""
    from cycada.export.repository import publish, remove_staging, stage_model, staging_root

    repository = tmp_path / "repository"
    segment = spec_for("segment", "segment", 3, 19)
    write_model(repository, segment, onnx_only, {}, code_only)
    before = _snapshot(repository)
    root = staging_root(repository)
    assert root == tmp_path / ".repository.export"
    staged = [
        stage_model(repository, segment, onnx_only, {}, code_only, root),
        stage_model(repository, spec_for("translate_s2t", "translate", 3, 3), onnx_only, {},
                    code_only, root),
    ]  # fmt: skip
    assert _snapshot(repository) == before
    assert [publish(model) for model in staged] == [
        repository / "segment" / "2",
        repository / "translate_s2t" / "1",
    ]
    assert (repository / "translate_s2t" / "config.pbtxt").is_file()
    assert versions(repository / "segment") == [1, 2]
    remove_staging(repository)
    assert not root.exists()

    staged = stage_model(repository, segment, onnx_only, {}, code_only, root=None)
    assert staged.version_dir == repository / "segment" / ".export" / "3"
    assert publish(staged) == repository / "segment" / "3"
    assert not (repository / "segment" / ".export").exists()
    assert (repository / "segment" / "3" / "model.py").is_file()


def test_without_the_package_index_the_runtime_takes_what_an_earlier_export_unpacked(
    tmp_path, monkeypatch
):
    """An air-gapped export (pip reaches no index): the packages for another Python come from
    the newest copy an earlier export unpacked in the cache, never one newer than this
    machine's; with none, the error says what to do."""
    from cycada.errors import ExportError
    from cycada.export.runtime import onnxruntime_distribution

    monkeypatch.setenv("CYCADA_CACHE_DIR", str(tmp_path / "cache"))
    python = "3.10" if sys.version_info[:2] != (3, 10) else "3.11"  # not this machine's
    name = onnxruntime_distribution()[0]
    fetched = RuntimeBuilder([python], log=lambda _: None).package(name, python)
    newer = fetched.folder.with_name(f"{name}-999.0-{fetched.wheel_tag}")
    shutil.copytree(fetched.folder, newer)

    monkeypatch.setenv("PIP_NO_INDEX", "1")  # and no wheel folder, whatever pip.conf names
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    lines: list[str] = []
    offline = RuntimeBuilder([python], log=lines.append)
    assert offline.package(name, python) == fetched
    assert "did not answer" in lines[-1] and f"cached {name} {fetched.version}" in lines[-1]
    with pytest.raises(ExportError, match="could not fetch no-such-cycada-package"):
        offline.package("no-such-cycada-package", python)


def test_a_rename_that_would_cross_file_systems_is_published_through_copies(
    tmp_path, code_only, monkeypatch
):
    """A bind mount of the same device passes the staging check and still refuses the rename
    (EXDEV): a new model is moved in part by part (a hidden copy in the repository's top folder
    would be loaded as a model), a version through a hidden copy in its model folder."""
    import errno

    repository = tmp_path / "repository"
    real_rename = os.rename

    def rename(source, target):
        if ".repository.export" in str(source):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_rename(source, target)

    monkeypatch.setattr(os, "rename", rename)
    spec = spec_for("segment", "segment", 3, 19)
    for _ in range(2):
        write_model(repository, spec, onnx_only, {}, code_only)
    model = repository / "segment"
    assert versions(model) == [1, 2] and (model / "config.pbtxt").is_file()
    assert (model / "2" / "model.onnx").read_bytes() == b"x"
    assert len(list((model / "runtime").iterdir())) == 1
    assert not [p for p in repository.rglob(".*") if p.name != ".export.lock"]
    assert not (tmp_path / ".repository.export").exists()


def test_cpu_engines_are_timed_at_the_width_clients_send():
    """A segmentation at segment-video's default width (what decides is the speed clients
    meet, not the run's training width); a translation at the run's width."""
    from cycada.export.exporter import _timing_frame
    from cycada.models.endpoints import Endpoint
    from cycada.sizes import VIDEO_WIDTH

    images = [np.zeros((1, 128, 256, 3), np.uint8)]
    meta = {"resize_width": 256}
    segment = Endpoint("segment", "segment", None, 8, 3, meta=meta)
    translate = Endpoint("translate_s2t", "translate", None, 4, 3, meta=meta)
    assert _timing_frame(segment, images).shape == (1, VIDEO_WIDTH // 2, VIDEO_WIDTH, 3)
    assert _timing_frame(translate, images).shape == (1, 128, 256, 3)
