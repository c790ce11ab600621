"""GPU-only checks (run by `make gpu-check`): CUDA training with AMP, PyTorch-on-CUDA serving
engine against the CPU graph, and TensorRT plans where TensorRT is installed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cycada.export.exporter import ExportOptions, export_run
from cycada.export.parity import scene_images
from cycada.serving.engines import OnnxEngine, TorchEngine
from cycada.training.segmentation.config import resolve_seg_config
from cycada.training.segmentation.pipeline import run_seg
from tests.helpers import TINY_SEG, write_tiny_domains

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none is visible"),
]


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory):
    root = write_tiny_domains(tmp_path_factory.mktemp("scenes"), 8, 256, 128)
    sets = [*TINY_SEG, "data.resize_width=256", "source.iterations=60", "device=cuda"]
    config = resolve_seg_config("quick", sets=sets, overrides={"data": {"data_root": str(root)}})
    out = tmp_path_factory.mktemp("run")
    metrics = run_seg(config, out, quiet=True)
    return out, metrics


def test_pipeline_trains_on_cuda_with_mixed_precision(cuda_run):
    out, metrics = cuda_run
    assert metrics["final"]["stage"] == "feature"
    assert "pixel: peak GPU memory" in (out / "log.txt").read_text()


def test_pytorch_cuda_engine_agrees_with_the_cpu_onnx_graph(cuda_run, tmp_path):
    out, _ = cuda_run
    export_run(out, tmp_path, ExportOptions(fp16=False), log=lambda _: None)
    folder = tmp_path / "segment" / "1"
    cpu = OnnxEngine(folder / "model.onnx", ["CPUExecutionProvider"])
    for half, bound in ((False, 0.999), (True, 0.99)):
        engine = TorchEngine(folder, "cuda", half)
        agree = total = 0
        for image in scene_images(count=3, width=512):
            expected = cpu.run(image[None], ["labels"])[0]
            got = engine.run(image[None], ["labels"])[0].cpu().numpy()
            agree += int((expected == got).sum())
            total += expected.size
        print(json.dumps({"fp16": half, "label_agreement": agree / total}))
        assert agree / total >= bound


def test_the_served_block_graph_runs_under_onnx_runtime_cuda(cuda_run, tmp_path):
    """model.onnx (two classes a block: NonZero, ScatterND) as the onnxruntime profile serves
    it on a GPU: the CPU's labels."""
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("ONNX Runtime has no CUDA provider here (pip install cycada[gpu])")
    out, _ = cuda_run
    export_run(out, tmp_path, ExportOptions(fp16=False), log=lambda _: None)
    model = tmp_path / "segment" / "1" / "model.onnx"
    cpu = OnnxEngine(model, ["CPUExecutionProvider"])
    cuda = OnnxEngine(model, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    for image in scene_images(count=3, width=512):
        expected = cpu.run(image[None], ["labels", "confidence"])
        got = cuda.run(image[None], ["labels", "confidence"])
        assert (expected[0] == got[0]).mean() >= 0.999
        assert np.abs(expected[1].astype(int) - got[1].astype(int)).max() <= 2


def test_tensorrt_plan_parity(cuda_run, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed on this machine")
    out, _ = cuda_run
    options = ExportOptions(tensorrt=True, trt_shapes=((128, 256), (256, 512)), trt_max_batch=2)
    report = export_run(out, tmp_path, options, log=lambda _: None)
    rows = [row for row in report.rows if row.variant == "tensorrt"]
    assert rows and all(row.ok for row in rows)
    assert (tmp_path / "segment" / "1" / "model.plan").exists()


def test_nvjpeg_decoder_agrees_with_the_cpu_path_on_grey_and_rotated_jpegs():
    """The real nvJPEG path (the CPU test uses a stand-in): three channels for a grey JPEG, EXIF
    rotation applied, pixels within JPEG decoder rounding of OpenCV's."""
    pytest.importorskip("torchvision", reason="the nvJPEG decoder needs torchvision")
    import cv2
    import numpy as np

    from cycada.serving.engines import CudaFrameDecoder, FrameDecoder
    from tests.helpers import jpeg_with_orientation

    rows, cols = np.mgrid[0:48, 0:80]  # smooth: decoders differ by rounding, not by detail
    colour = np.stack([rows * 5, cols * 3, (rows + cols) * 2], -1).astype(np.uint8)
    grey = cv2.imencode(".jpg", colour[..., 0])[1].reshape(-1)
    plain = cv2.imencode(".jpg", colour)[1].reshape(-1)
    gpu, cpu = CudaFrameDecoder(torch.device("cuda")), FrameDecoder()
    for data in (grey, jpeg_with_orientation(plain, 6), plain):
        expected = cpu.decode(data)
        got = gpu.decode(data).cpu().numpy()
        assert got.shape == expected.shape
        assert abs(got.astype(int) - expected.astype(int)).mean() < 2.0


def test_compiled_package_on_cuda_is_fp16_checked_and_timed_against_eager(cuda_run, tmp_path):
    """`cycada export --compile` on a GPU: an fp16 package with parity against the ONNX graph,
    the package and eager timed with and without CUDA graphs, the fastest recorded; the
    server's engine (auto) then runs what was recorded."""
    from cycada.export.compiled import CUDA_ENGINES
    from cycada.serving.engines import select_engine

    out, _ = cuda_run
    report = export_run(out, tmp_path, ExportOptions(fp16=False, compile=True), print)
    rows = [row for row in report.rows if row.variant == "aoti-cuda-fp16"]
    assert rows and all(row.ok for row in rows)
    folder = tmp_path / "segment" / "1"
    choice = json.loads((folder / "engine_choice.json").read_text())
    print(json.dumps(choice))
    # eager is the reference; a variant that disagreed with it is left out (and logged)
    assert "eager" in choice["timings_ms"] and set(choice["timings_ms"]) <= set(CUDA_ENGINES)
    engine = select_engine(folder, {}, "GPU", 0)
    assert ("aoti package" in engine.name) == (choice["default_engine"] == "pytorch")
    assert ("CUDA graphs" in engine.name) == choice["cuda_graphs"]


def test_cuda_graph_replay_gives_the_plain_graph_labels_for_every_shape(cuda_run, tmp_path):
    """One graph per input shape, captured on first use; replays agree with the plain graph,
    also when shapes alternate (the outputs are the graph's own buffers)."""
    out, _ = cuda_run
    export_run(out, tmp_path, ExportOptions(onnx=False), log=lambda _: None)
    folder = tmp_path / "segment" / "1"
    plain = TorchEngine(folder, "cuda", True, use_package=False)
    graphs = TorchEngine(folder, "cuda", True, use_package=False, cuda_graphs=True)
    assert graphs.name.endswith("CUDA graphs)")
    images = scene_images(count=3, width=512)
    batches = [images[0][None], images[1][None], np.stack([images[1]] * 2), images[0][None]]
    for batch in batches:
        expected = plain.run(batch, ["labels"])[0].numpy()
        got = graphs.run(batch, ["labels"])[0].numpy()
        assert (expected == got).mean() >= 0.999
    assert len(graphs.graph.captured) == len({batch.shape for batch in batches})
