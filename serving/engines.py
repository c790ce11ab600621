"""Inference engines of the Python-backend models: ONNX Runtime, OpenVINO (CPU), or PyTorch.

All run the same uint8-in/uint8-out graph (the ONNX file, its OpenVINO conversion, or the
network weights wrapped in :mod:`cycada.models.graphs`). The PyTorch engine moves tensors
through DLPack, never through the stub's numpy bridge, so it also works where the stub's build
misreads numpy 2 arrays.
"""

from __future__ import annotations

import abc
import importlib.util
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

LOGGER = logging.getLogger("cycada.serving")


class FrameDecoder:
    """One encoded file (uint8 row) → RGB uint8 (H, W, 3) with OpenCV; ``stack`` batches."""

    def decode(self, data: np.ndarray) -> Any | None:
        import cv2  # only the encoded-frame model carries OpenCV (export.runtime)

        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
        return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def stack(self, images: list) -> Any:
        return np.stack(images)


class Engine(abc.ABC):
    name = "engine"

    @abc.abstractmethod
    def run(self, batch: Any, output_names: list[str]) -> list:
        """Outputs (in ``output_names`` order) of one uint8 NHWC batch."""

    def input_array(self, tensor) -> np.ndarray:
        return tensor.as_numpy()

    def output_tensor(self, pb_utils, name: str, array):
        return pb_utils.Tensor(name, np.ascontiguousarray(array))

    def decoder(self) -> FrameDecoder:
        return FrameDecoder()


class OnnxEngine(Engine):
    def __init__(self, path: Path, providers: list, threads: int = 0):
        # only the engine that runs needs it: the NumPy-only backend stub imports this module
        from cycada.deps import onnxruntime

        ort = onnxruntime()

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # no busy-waiting between requests: several models and versions share few cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.name = f"onnxruntime ({self.session.get_providers()[0]}, {path.name})"

    def run(self, batch: np.ndarray, output_names: list[str]) -> list:
        values = dict(zip(self.outputs, self.session.run(None, {"images": batch})))
        return [values[name] for name in output_names]


OPENVINO_FILE = "model.openvino.xml"  # with model.openvino.bin beside it
# engine names of engine_choice.json → OpenVINO's inference precision on the CPU
OPENVINO_PRECISIONS = {"openvino": "f32", "openvino-bf16": "bf16"}


class OpenVinoEngine(Engine):
    """OpenVINO's CPU runtime on the export's conversion of the graph (``model.openvino.xml``);
    ``precision`` f32, or bf16 where the CPU computes in it (the export checks its labels).

    A process that has run OpenVINO must not fork afterwards: one crashed when it later
    started PyTorch DataLoader workers. Triton's stub never forks; the export and the tests
    run OpenVINO in a spawned child."""

    def __init__(self, path: Path, precision: str = "f32", threads: int = 0):
        # only the engine that runs needs it: the NumPy-only backend stub imports this module
        import openvino

        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        core = openvino.Core()
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.lock = threading.Lock()  # one request object: one inference at a time
        self.outputs = [o.get_any_name() for o in self.compiled.outputs]
        self.name = f"openvino (CPU {precision}, {path.name})"

    def run(self, batch: np.ndarray, output_names: list[str]) -> list:
        with self.lock:
            results = self.request.infer({0: batch}, share_outputs=False)
            values = dict(zip(self.outputs, results.values()))
        return [values[name] for name in output_names]


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1-8) of a JPEG, 1 when absent or unreadable."""
    position = 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xE1 and data[position + 4 : position + 10] == b"Exif\x00\x00":
            tiff = position + 10
            order = "little" if data[tiff : tiff + 2] == b"II" else "big"
            ifd = tiff + int.from_bytes(data[tiff + 4 : tiff + 8], order)
            for entry in range(int.from_bytes(data[ifd : ifd + 2], order)):
                at = ifd + 2 + 12 * entry
                if int.from_bytes(data[at : at + 2], order) == 0x0112:
                    value = int.from_bytes(data[at + 8 : at + 10], order)
                    return value if 1 <= value <= 8 else 1
            return 1
        if marker in (0xDA, 0xD9) or length < 2:
            return 1
        position += 2 + length
    return 1


DEVICE_FAULTS = ("out of memory", "cuda", "cudnn", "nvjpeg_status_allocator", "device-side")


def is_device_fault(exc: BaseException) -> bool:
    """Whether an error comes from the GPU (memory, driver, CUDA) rather than the data."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or any(sign in text for sign in DEVICE_FAULTS)


class CudaFrameDecoder(FrameDecoder):
    """nvJPEG through torchvision on the engine's GPU; PNG, and JPEGs whose EXIF asks for a
    rotation, through OpenCV (which applies it), so both paths give the same RGB image;
    greyscale JPEGs are decoded to three channels like the CPU path."""

    def __init__(self, device, decode_jpeg=None, rgb_mode=None):
        # only the engine that runs needs it: the NumPy-only backend stub imports this module
        import torch

        if decode_jpeg is None:
            from torchvision.io import ImageReadMode, decode_jpeg

            rgb_mode = ImageReadMode.RGB
        self.torch, self.decode_jpeg, self.device = torch, decode_jpeg, device
        self.rgb_mode = rgb_mode

    def decode(self, data: np.ndarray):
        is_jpeg = data.size > 2 and data[0] == 0xFF and data[1] == 0xD8
        if is_jpeg and exif_orientation(data[:65536].tobytes()) == 1:
            try:
                raw = self.torch.from_numpy(np.ascontiguousarray(data))
                image = self.decode_jpeg(raw, mode=self.rgb_mode, device=self.device)
            except RuntimeError as exc:
                if is_device_fault(exc):
                    raise  # the server's fault (INTERNAL), never the client's bad input
                return self._opencv(data)  # nvJPEG refuses some valid files: OpenCV decides
            if image.shape[0] == 1:  # a decoder that kept one channel: as the CPU path does
                image = image.expand(3, -1, -1)
            return image.permute(1, 2, 0)
        return self._opencv(data)

    def _opencv(self, data: np.ndarray):
        image = super().decode(data)
        return None if image is None else self.torch.from_numpy(image).to(self.device)

    def stack(self, images: list):
        return self.torch.stack(images)


def _folder_endpoint(folder: Path):
    """The Endpoint of a version folder: its endpoint.json and network.safetensors."""
    # only the engine that runs needs it: the NumPy-only backend stub imports this module
    from safetensors.torch import load_file

    from cycada.models.endpoints import Endpoint, build_network

    info = json.loads((folder / "endpoint.json").read_text())
    network = build_network(info["network"])
    network.load_state_dict(load_file(str(folder / "network.safetensors")))
    kind = {"encoded": "segment"}.get(info["kind"], info["kind"])
    return Endpoint(
        info["endpoint"], kind, network.eval(), info["pad_multiple"], info["in_channels"]
    )


class TorchEngine(Engine):
    """The version folder's ``network.safetensors`` in its serving graph, fp16 on CUDA."""

    def __init__(
        self,
        folder: Path,
        device: str,
        half: bool,
        compile_mode: str = "",
        use_package: bool = True,
        cuda_graphs: bool = False,
        endpoint=None,
    ):
        """``endpoint`` (an export's Endpoint) instead of the folder's endpoint.json and
        weights: the exporter times the engines before the version folder is complete."""
        # only the engine that runs needs it: the NumPy-only backend stub imports this module
        import torch

        from cycada.models.graphs import serving_graph

        self.torch = torch
        endpoint = endpoint or _folder_endpoint(folder)
        kind = endpoint.kind
        self.device = torch.device(device)
        precision = "fp16" if half else "fp32"
        # a package compiled at export for this machine loads in well under a second
        from cycada.models.packages import PACKAGE, load_package

        eager_graph = None

        def eager():  # built once, when first needed
            nonlocal eager_graph
            if eager_graph is None:
                graph = serving_graph(endpoint, half=half).to(self.device)
                if self.device.type == "cuda":
                    graph = graph.to(memory_format=torch.channels_last)
                    torch.backends.cudnn.benchmark = True
                eager_graph = (
                    torch.compile(graph, mode=compile_mode, dynamic=True) if compile_mode else graph
                )
            return eager_graph

        package, why_not = None, "eager asked for"
        if use_package:  # frames smaller than the package takes run eager
            package, why_not = load_package(folder, self.device, half, fallback=eager)
        if package is not None:
            self.graph = package
            self.name = f"aoti package ({self.device}, {precision})"
        else:
            if use_package and (folder / PACKAGE).exists():
                LOGGER.warning(f"{folder / PACKAGE} not used: {why_not}; serving eager")
            self.graph = eager()
            compiled = ", compiled" if compile_mode else ""
            self.name = f"pytorch ({self.device}, {precision}{compiled})"
        if cuda_graphs and self.device.type == "cuda":
            # only the engine that runs needs it: the NumPy-only backend stub imports this module
            from cycada.serving.cuda_graphs import CudaGraphRunner

            self.graph = CudaGraphRunner(self.graph)
            self.name = self.name[:-1] + ", CUDA graphs)"
        self.output_order = {
            "segment": ["labels", "confidence"],
            "translate": ["translated"],
            "classify": ["class_ids", "probabilities"],
        }[kind]

    def run(self, batch, output_names: list[str]) -> list:
        torch = self.torch
        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(batch)
        with torch.inference_mode():
            outputs = self.graph(batch.to(self.device, non_blocking=True))
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        values = dict(zip(self.output_order, outputs))
        # one device→host copy per batch (responses are host slices of it)
        return [values[name].cpu() for name in output_names]

    def input_array(self, tensor) -> np.ndarray:
        # only the engine that runs needs it: the NumPy-only backend stub imports this module
        from torch.utils.dlpack import from_dlpack

        return from_dlpack(tensor.to_dlpack()).numpy()

    def output_tensor(self, pb_utils, name: str, array):
        # only the engine that runs needs it: the NumPy-only backend stub imports this module
        from torch.utils.dlpack import to_dlpack

        if isinstance(array, np.ndarray):
            array = self.torch.from_numpy(array)
        return pb_utils.Tensor.from_dlpack(name, to_dlpack(array.contiguous()))

    def decoder(self) -> FrameDecoder:
        if self.device.type == "cuda" and importlib.util.find_spec("torchvision"):
            return CudaFrameDecoder(self.device)  # nvJPEG; without torchvision, the CPU decodes
        return FrameDecoder()


def _torch_cuda() -> bool:
    try:
        # only the engine that runs needs it: the NumPy-only backend stub imports this module
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def engine_choice(choice: str, has_onnx: bool, providers: list[str], cuda: bool) -> tuple[str, str]:
    """(engine, how) this instance would use: ``onnxruntime`` with its execution provider,
    ``openvino[-bf16]`` on the CPU, or ``pytorch`` on a device. ``choice`` is the model parameter
    ``engine`` (auto, onnxruntime, openvino, openvino-bf16, pytorch); shared by
    :func:`select_engine` and ``cycada doctor``."""
    if not has_onnx:
        choice = "pytorch"  # a weights-only export
    if choice in OPENVINO_PRECISIONS and not cuda:
        return choice, "CPU"
    if choice in ("auto", "onnxruntime"):
        for provider in ("TensorrtExecutionProvider", "CUDAExecutionProvider"):
            if provider in providers:
                return "onnxruntime", provider
        if choice == "onnxruntime" or not cuda:
            return "onnxruntime", "CPUExecutionProvider"
    return "pytorch", "cuda" if cuda else "cpu"


def recorded_choice(folder: Path) -> dict | None:
    """The engine choice the export measured (``engine_choice.json``), when it was measured on
    this kind of device (a CPU choice does not hold on a GPU host, or the reverse)."""
    recorded = folder / "engine_choice.json"
    if not recorded.exists():
        return None
    measured = json.loads(recorded.read_text())
    return measured if measured.get("device") == ("cuda" if _torch_cuda() else "cpu") else None


def select_engine(
    folder: Path, parameters: dict[str, str], instance_kind: str, device_id: int
) -> Engine:
    """The engine for this instance (parameter ``engine``: auto, onnxruntime, pytorch (the
    compiled package when it loads here, else eager), eager (PyTorch, never the package);
    parameter ``cuda_graphs``: true replays a CUDA graph per input shape on a GPU)."""
    choice = parameters.get("engine", os.environ.get("CYCADA_SERVE_ENGINE", "auto"))
    threads = int(parameters.get("intra_op_threads", "0") or 0)
    measured = recorded_choice(folder) if choice == "auto" else None
    if measured:
        choice = measured.get("default_engine", "auto")
        parameters = {"cuda_graphs": str(measured.get("cuda_graphs", False)), **parameters}
    use_package = choice != "eager"
    choice = "pytorch" if choice == "eager" else choice
    has_onnx = (folder / "model.onnx").exists()
    providers: list[str] = []
    if has_onnx and choice in ("auto", "onnxruntime"):
        # only the engine that runs needs it: the NumPy-only backend stub imports this module
        from cycada.deps import onnxruntime

        ort = onnxruntime()

        providers = ort.get_available_providers()
    engine, how = engine_choice(choice, has_onnx, providers, _torch_cuda())
    cuda = {"device_id": device_id}
    if how == "TensorrtExecutionProvider":
        trt = {**cuda, "trt_fp16_enable": True, "trt_engine_cache_enable": True}
        chain = [("TensorrtExecutionProvider", trt), ("CUDAExecutionProvider", cuda)]
        return OnnxEngine(folder / "model.onnx", [*chain, "CPUExecutionProvider"])
    if how == "CUDAExecutionProvider":
        half = folder / "model.fp16.onnx"
        path = half if half.exists() else folder / "model.onnx"
        return OnnxEngine(path, [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"])
    if engine == "onnxruntime":
        return OnnxEngine(folder / "model.onnx", ["CPUExecutionProvider"], threads)
    if engine in OPENVINO_PRECISIONS:
        return OpenVinoEngine(folder / OPENVINO_FILE, OPENVINO_PRECISIONS[engine], threads)
    device = f"cuda:{device_id}" if how == "cuda" else "cpu"
    half = device != "cpu" and parameters.get("precision", "fp16") == "fp16"
    graphs = parameters.get("cuda_graphs", "").lower() == "true"
    return TorchEngine(folder, device, half, parameters.get("compile", ""), use_package, graphs)
