"""What a served model takes and returns, read from the server's metadata, and the checks of a
request's inputs against it (clear errors before anything is sent)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cycada.errors import DataError, ServingError

NUMPY_OF = {"UINT8": np.uint8, "FP32": np.float32, "FP16": np.float16, "INT64": np.int64}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # with the batch dimension; -1 = free


@dataclass(frozen=True)
class ModelSignature:
    model: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    max_batch_size: int  # 0 = the model does not batch
    class_names: tuple[str, ...] = ()  # a segmenter's classes in id order (config parameter)

    @classmethod
    def from_server(cls, client, model: str, version: str, headers) -> ModelSignature:
        # tritonclient takes a second to import: only when a server is called
        from tritonclient.utils import InferenceServerException

        try:
            metadata = client.get_model_metadata(model, version, headers=headers, as_json=True)
            config = client.get_model_config(model, version, headers=headers, as_json=True)
        except InferenceServerException as exc:  # e.g. a missing or wrong secret
            raise ServingError(f"cannot read model '{model}': {exc.message() or exc}") from None
        config = config["config"]
        names = config.get("parameters", {}).get("class_names", {}).get("string_value", "")

        def specs(items) -> dict[str, TensorSpec]:
            return {
                item["name"]: TensorSpec(
                    item["name"], item["datatype"], tuple(int(d) for d in item["shape"])
                )
                for item in items
            }

        return cls(
            model,
            specs(metadata["inputs"]),
            specs(metadata["outputs"]),
            int(config.get("max_batch_size", 0)),
            tuple(name for name in names.split(",") if name),
        )

    def check(self, inputs: dict[str, np.ndarray]) -> None:
        """Clear errors when names, dtypes or shapes do not match the model's metadata."""
        missing = set(self.inputs) - set(inputs)
        unknown = set(inputs) - set(self.inputs)
        if missing or unknown:
            raise DataError(
                f"model '{self.model}' takes inputs {sorted(self.inputs)}, got {sorted(inputs)}"
            )
        for name, array in inputs.items():
            spec = self.inputs[name]
            expected = NUMPY_OF.get(spec.datatype)
            if expected is not None and array.dtype != expected:
                raise DataError(
                    f"input '{name}' of model '{self.model}' must be {spec.datatype}, "
                    f"got {array.dtype}"
                )
            if len(array.shape) != len(spec.shape) or any(
                want not in (-1, got) for want, got in zip(spec.shape, array.shape)
            ):
                raise DataError(
                    f"input '{name}' of model '{self.model}' must have shape {list(spec.shape)} "
                    f"(-1 = any), got {list(array.shape)}"
                )
            if self.max_batch_size and array.shape[0] > self.max_batch_size:
                raise DataError(
                    f"input '{name}': batch {array.shape[0]} is over the model's "
                    f"max_batch_size {self.max_batch_size}"
                )
