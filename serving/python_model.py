"""Triton Python-backend models (the default deployment profile).

Each exported version folder has a one-line ``model.py`` that imports a class from here:

* :class:`ImageModel`: uint8 images in, the exported graph's outputs out.
* :class:`EncodedFrameModel`: JPEG/PNG bytes in (10-20x fewer bytes per frame), decoded in the
  model (on the GPU with nvJPEG when PyTorch runs there), then the same graph.

Segmentation models also count the label-free signals of what they serve as Triton metrics
(:mod:`cycada.serving.served_signals`; config parameter ``served_signals: false`` turns it off).

The engine is chosen per instance (parameter ``engine``, default ``auto``): ONNX Runtime with the
TensorRT/CUDA providers when onnxruntime-gpu and a GPU are present; else PyTorch on CUDA (fp16,
channels_last, optionally compiled) when a GPU is present; else ONNX Runtime on the CPU.
"""

from __future__ import annotations

import abc
import json
import os
from pathlib import Path
from typing import Any

from cycada.serving.batching import (
    MAX_BATCH_PIXELS,
    MAX_FRAME_BYTES,
    MAX_PIXELS,
    MAX_REQUEST_PIXELS,
    Checked,
    Failure,
    check_images,
    decode_frames,
    run_grouped,
)
from cycada.serving.engines import Engine, select_engine
from cycada.serving.served_signals import ServedSignals


def _pb_utils():
    import triton_python_backend_utils as pb_utils  # only inside Triton's stub process

    return pb_utils


def default_threads(config: dict[str, Any]) -> int:
    """ONNX Runtime threads of one instance: this process's CPUs shared by the model's CPU
    instances (ORT's default, every core per session, oversubscribes a small machine that
    serves several models and versions)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    instances = sum(
        int(group.get("count", 1))
        for group in config.get("instance_group", [])
        if group.get("kind", "KIND_CPU") == "KIND_CPU"
    )
    return max(1, (cpus or 1) // max(1, instances))


def _parameters(config: dict[str, Any]) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


class _Model(abc.ABC):
    """Shared set-up: config, parameters, the engine of this instance."""

    input_name = "images"

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        parameters = _parameters(config)
        self.channels = int(config["input"][0]["dims"][-1]) if self.input_name == "images" else 3
        self.output_names = [output["name"] for output in config["output"]]
        self.max_batch = max(1, int(config.get("max_batch_size", 1)))
        self.max_pixels = int(parameters.get("max_pixels", MAX_PIXELS))
        self.max_request_pixels = int(parameters.get("max_request_pixels", MAX_REQUEST_PIXELS))
        self.max_frame_bytes = int(parameters.get("max_frame_bytes", MAX_FRAME_BYTES))
        self.max_batch_pixels = int(parameters.get("max_batch_pixels", MAX_BATCH_PIXELS))
        self.allow_truncated = parameters.get("allow_truncated_frames", "").lower() == "true"
        if not parameters.get("intra_op_threads"):
            parameters["intra_op_threads"] = str(default_threads(config))
        self.engine: Engine = select_engine(
            folder,
            parameters,
            args.get("model_instance_kind", "CPU"),
            int(args.get("model_instance_device_id", 0)),
        )
        where = f"{args['model_name']} version {args['model_version']}"
        _pb_utils().Logger.log_info(f"{where}: {self.engine.name}")
        self.signals: ServedSignals | None = None
        segments = {"labels", "confidence"} <= set(self.output_names)
        if segments and parameters.get("served_signals", "true").lower() != "false":
            info = json.loads((folder / "endpoint.json").read_text())
            try:
                self.signals = ServedSignals(
                    _pb_utils(),
                    args["model_name"],
                    args["model_version"],
                    args.get("model_instance_name", args["model_name"]),
                    list(info.get("class_names", [])),
                    info.get("baseline"),
                )
            except Exception as exc:  # a backend without custom metrics still serves
                _pb_utils().Logger.log_warn(f"served signals off: {exc}")

    @abc.abstractmethod
    def _read(self, request) -> Checked:
        """One request's input, checked (images, or the reason it is refused)."""

    def _read_safely(self, request) -> Checked:
        """A request that cannot even be read fails alone, never the whole dynamic batch."""
        try:
            return self._read(request)
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return Checked(None, f"cannot read the request: {reason}", bad_input=False)

    def execute(self, requests: list) -> list:
        pb_utils = _pb_utils()
        checked = [self._read_safely(request) for request in requests]
        # compute and copy back only what someone asked for (all outputs when none named)
        wanted = [set(r.requested_output_names()) or set(self.output_names) for r in requests]
        needed = {"labels", "confidence"} if self.signals is not None else set()
        names = [n for n in self.output_names if n in needed or any(n in w for w in wanted)]
        results = run_grouped(
            checked,
            lambda batch: self.engine.run(batch, names),
            self.max_batch,
            self.max_batch_pixels,
        )
        if self.signals is not None:
            self._count(checked, results, names)
        responses = []
        for result, asked in zip(results, wanted):
            if isinstance(result, Failure):
                code = (
                    pb_utils.TritonError.INVALID_ARG
                    if result.bad_input
                    else pb_utils.TritonError.INTERNAL
                )
                error = pb_utils.TritonError(result.message, code)
                responses.append(pb_utils.InferenceResponse(error=error))
            else:
                tensors = [
                    self.engine.output_tensor(pb_utils, name, array)
                    for name, array in zip(names, result)
                    if name in asked
                ]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def _count(self, checked: list[Checked], results: list, names: list[str]) -> None:
        """The served signals of the requests that got outputs (never fails a response)."""
        labels, confidence = names.index("labels"), names.index("confidence")
        served = [
            (item.images, result[labels], result[confidence])
            for item, result in zip(checked, results)
            if not isinstance(result, Failure)
        ]
        try:
            self.signals.observe(served)
        except Exception as exc:  # a metric that cannot be sent costs the metric, not the frame
            _pb_utils().Logger.log_warn(f"served signals not counted: {exc}")

    def finalize(self) -> None:
        if self.signals is not None:
            self.signals.close()
        self.engine = None


class ImageModel(_Model):
    """uint8 (N, H, W, C) images → the exported graph's outputs."""

    def _read(self, request) -> Checked:
        tensor = _pb_utils().get_input_tensor_by_name(request, "images")
        array = self.engine.input_array(tensor) if tensor is not None else None
        return check_images(array, self.channels, self.max_pixels, self.max_request_pixels)


class EncodedFrameModel(_Model):
    """JPEG/PNG files as UINT8 rows (N, bytes) → labels and confidence at the frame's size."""

    input_name = "frames"

    def _read(self, request) -> Checked:
        tensor = _pb_utils().get_input_tensor_by_name(request, "frames")
        frames = self.engine.input_array(tensor) if tensor is not None else None
        return decode_frames(
            frames,
            self.max_pixels,
            self.engine.decoder(),
            self.max_request_pixels,
            self.allow_truncated,
            self.max_frame_bytes,
        )
