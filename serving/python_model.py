"""Triton Python-backend models (the default deployment profile).

Each exported version folder has a one-line ``model.py`` that imports a class from here.

* :class:`OnnxImageModel` runs the exported uint8 graph with ONNX Runtime: TensorRT or CUDA
  providers when onnxruntime-gpu and a GPU are present (the FP16 graph then), else the CPU.
* :class:`EncodedFrameModel` decodes JPEG/PNG frames and asks the ``segment`` model for the
  labels through business-logic scripting, so both share one engine and its batching.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from cycada.serving.batching import MAX_PIXELS, Checked, check_images, decode_frames, run_grouped


def _pb_utils():
    import triton_python_backend_utils as pb_utils  # only inside Triton's stub process

    return pb_utils


def _parameters(config: dict[str, Any]) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


def _responses(pb_utils, requests, results, output_names) -> list:
    responses = []
    for result in results:
        if isinstance(result, str):
            responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(result)))
        else:
            tensors = [
                pb_utils.Tensor(n, np.ascontiguousarray(a)) for n, a in zip(output_names, result)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
    return responses


def onnx_providers(instance_kind: str, device_id: int) -> tuple[list, bool]:
    """ONNX Runtime providers for this instance, and whether to run the FP16 graph."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wants_gpu = instance_kind != "CPU" or os.environ.get("CYCADA_SERVE_GPU") == "1"
    if wants_gpu and "TensorrtExecutionProvider" in available:
        options = {"device_id": device_id, "trt_fp16_enable": True, "trt_engine_cache_enable": True}
        return [
            ("TensorrtExecutionProvider", options),
            ("CUDAExecutionProvider", {"device_id": device_id}),
            "CPUExecutionProvider",
        ], False
    if wants_gpu and "CUDAExecutionProvider" in available:
        return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"], True
    return ["CPUExecutionProvider"], False


class OnnxImageModel:
    """uint8 images → the exported graph's outputs, one ONNX Runtime session per instance."""

    def initialize(self, args: dict[str, str]) -> None:
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        self.input_config = config["input"][0]
        self.channels = int(self.input_config["dims"][-1])
        self.output_names = [output["name"] for output in config["output"]]
        self.max_batch = max(1, int(config.get("max_batch_size", 1)))
        parameters = _parameters(config)
        self.max_pixels = int(parameters.get("max_pixels", MAX_PIXELS))
        providers, half = onnx_providers(
            args.get("model_instance_kind", "CPU"), int(args.get("model_instance_device_id", 0))
        )
        name = parameters.get("onnx_file") or (
            "model.fp16.onnx" if half and (folder / "model.fp16.onnx").exists() else "model.onnx"
        )
        options = ort.SessionOptions()
        threads = int(parameters.get("intra_op_threads", "0"))
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(folder / name), options, providers=providers)
        self.session_outputs = [o.name for o in self.session.get_outputs()]

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        outputs = dict(zip(self.session_outputs, self.session.run(None, {"images": batch})))
        return [outputs[name] for name in self.output_names]

    def execute(self, requests: list) -> list:
        pb_utils = _pb_utils()
        checked = []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, "images")
            array = tensor.as_numpy() if tensor is not None else None
            checked.append(check_images(array, self.channels, self.max_pixels))
        results = run_grouped(checked, self._run, self.max_batch)
        return _responses(pb_utils, requests, results, self.output_names)

    def finalize(self) -> None:
        self.session = None


class EncodedFrameModel:
    """JPEG/PNG bytes → labels and confidence at the decoded frame's size, via ``segment``."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = _parameters(config)
        self.segment_model = parameters.get("segment_model", "segment")
        self.max_pixels = int(parameters.get("max_pixels", MAX_PIXELS))
        self.max_batch = max(1, int(config.get("max_batch_size", 1)))
        self.output_names = [output["name"] for output in config["output"]]

    def _segment(self, batch: np.ndarray) -> list[np.ndarray]:
        pb_utils = _pb_utils()
        request = pb_utils.InferenceRequest(
            model_name=self.segment_model,
            requested_output_names=self.output_names,
            inputs=[pb_utils.Tensor("images", batch)],
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(response.error().message())
        return [
            pb_utils.get_output_tensor_by_name(response, name).as_numpy()
            for name in self.output_names
        ]

    def execute(self, requests: list) -> list:
        pb_utils = _pb_utils()
        checked: list[Checked] = []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, "frames")
            checked.append(
                decode_frames(tensor.as_numpy() if tensor is not None else None, self.max_pixels)
            )
        results = run_grouped(checked, self._segment, self.max_batch)
        return _responses(pb_utils, requests, results, self.output_names)
