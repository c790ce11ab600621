"""TensorRT plans from the exported ONNX graphs (TensorRT Python API), cached per GPU and version.

FP16 always; INT8 on request, calibrated on target-domain images. One optimization profile covers
batch 1..N and the configured resolutions (smallest to largest, the middle one as the optimum).
Plans are tied to the GPU architecture and TensorRT version, so the cache key holds both.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from cycada.errors import DataError, ExportError
from cycada.export.onnx_export import INPUT_NAME, output_names
from cycada.export.repository import NativeProfile, plan_profile
from cycada.models.endpoints import Endpoint

CACHE = Path(os.environ.get("CYCADA_TRT_CACHE", Path.home() / ".cache" / "cycada" / "tensorrt"))


def _tensorrt():
    try:
        # optional: TensorRT exists only on a GPU host with it installed
        import tensorrt as trt
        import torch
    except ImportError as exc:
        raise ExportError(
            f"--tensorrt needs the TensorRT Python package and a CUDA GPU ({exc}); "
            "pip install tensorrt, or export without --tensorrt"
        ) from None
    if not torch.cuda.is_available():
        raise ExportError("--tensorrt needs a CUDA GPU; none is visible")
    return trt, torch


def _cache_path(onnx_path: Path, options: Any, trt, torch) -> Path:
    digest = hashlib.sha256(onnx_path.read_bytes())
    digest.update(
        repr((options.trt_shapes, options.trt_max_batch, options.int8_calibration)).encode()
    )
    major, minor = torch.cuda.get_device_capability()
    gpu = torch.cuda.get_device_name().replace(" ", "_")
    return CACHE / f"{digest.hexdigest()[:16]}-{gpu}-sm{major}{minor}-trt{trt.__version__}.plan"


def _calibration_batches(folder: Path, shape: tuple[int, int], channels: int, limit: int = 64):
    # optional: TensorRT exists only on a GPU host with it installed
    import cv2

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    if not files:
        raise DataError(f"--int8-calibration {folder} has no PNG/JPEG images")
    for path in files[:limit]:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            continue
        image = cv2.cvtColor(cv2.resize(image, (shape[1], shape[0])), cv2.COLOR_BGR2RGB)
        yield np.ascontiguousarray(image[None, ..., :channels])


def build_plan(onnx_path: Path, plan_path: Path, endpoint: Endpoint, options: Any) -> Path:
    """Build (or take from the cache) the plan of ``onnx_path`` and write it to ``plan_path``."""
    trt, torch = _tensorrt()
    cached = _cache_path(onnx_path, options, trt, torch)
    if not cached.exists():
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ExportError(f"{endpoint.name}: TensorRT cannot parse {onnx_path} ({errors})")
        config = builder.create_builder_config()
        config.set_flag(trt.BuilderFlag.FP16)
        # loadable by a newer TensorRT too (NVIDIA's container may carry another version)
        if hasattr(trt.BuilderFlag, "VERSION_COMPATIBLE"):
            config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        native = NativeProfile(options.trt_max_batch, tuple(options.trt_shapes))
        digit_size = getattr(endpoint.network, "in_size", 28)
        max_batch, (low, middle, high) = plan_profile(endpoint.kind, native, digit_size)
        channels = endpoint.in_channels
        profile = builder.create_optimization_profile()
        profile.set_shape(
            INPUT_NAME,
            (1, *low, channels),
            (max(1, max_batch // 2), *middle, channels),
            (max_batch, *high, channels),
        )
        config.add_optimization_profile(profile)
        if options.int8_calibration is not None:
            config.set_flag(trt.BuilderFlag.INT8)
            config.int8_calibrator = _Calibrator(
                trt,
                torch,
                list(_calibration_batches(options.int8_calibration, middle, channels)),
                cached.with_suffix(".calib"),
            )
            config.set_calibration_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ExportError(f"{endpoint.name}: TensorRT failed to build a plan (see its log)")
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".partial")
        tmp.write_bytes(bytes(serialized))
        os.replace(tmp, cached)
    shutil.copy2(cached, plan_path)
    return plan_path


class _Calibrator:
    """INT8 entropy calibration on target-domain images (one image per batch)."""

    def __new__(cls, trt, torch, batches, cache_file: Path):
        class Calibrator(trt.IInt8EntropyCalibrator2):
            def __init__(self):
                super().__init__()
                self.batches, self.index, self.device = batches, 0, None

            def get_batch_size(self):
                return 1

            def get_batch(self, names):
                if self.index >= len(self.batches):
                    return None
                self.device = torch.from_numpy(self.batches[self.index]).cuda()
                self.index += 1
                return [int(self.device.data_ptr())]

            def read_calibration_cache(self):
                return cache_file.read_bytes() if cache_file.exists() else None

            def write_calibration_cache(self, cache):
                cache_file.write_bytes(bytes(cache))

        return Calibrator()


def plan_runner(plan_path: Path, endpoint: Endpoint):
    """A parity runner: uint8 batch (host) → outputs (host), through the plan on the GPU."""
    trt, torch = _tensorrt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    context = engine.create_execution_context()
    names = output_names(endpoint)
    dtypes = {trt.DataType.UINT8: torch.uint8, trt.DataType.FLOAT: torch.float32}
    stream = torch.cuda.Stream()

    def run(batch: np.ndarray) -> list[np.ndarray]:
        images = torch.from_numpy(batch).cuda()
        context.set_input_shape(INPUT_NAME, tuple(images.shape))
        context.set_tensor_address(INPUT_NAME, images.data_ptr())
        outputs = []
        for name in names:
            shape = tuple(context.get_tensor_shape(name))
            tensor = torch.empty(shape, dtype=dtypes[engine.get_tensor_dtype(name)], device="cuda")
            context.set_tensor_address(name, tensor.data_ptr())
            outputs.append(tensor)
        context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        return [output.cpu().numpy() for output in outputs]

    return run
