"""OpenVINO's conversion of a serving graph: a CPU engine the export times beside ONNX Runtime.

OpenVINO is optional (the ``[cpu]`` extra): without it the export goes on with ONNX Runtime
alone. The conversion (``model.openvino.xml`` and ``.bin``) is read by the Python backend's
:class:`~cycada.serving.engines.OpenVinoEngine` and by Triton's own openvino backend (the
``openvino`` profile). It is converted from the graph without the channels-last Resize, which
OpenVINO runs several times slower than the plain layout.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

from cycada.export.onnx_export import export_onnx
from cycada.export.run_models import Endpoint
from cycada.serving.engines import OPENVINO_FILE, OPENVINO_PRECISIONS


def available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def precisions() -> dict[str, str]:
    """Engine name → precision of the OpenVINO engines this CPU runs: fp32, and bf16 where the
    CPU computes in it (AVX-512 BF16, AMX)."""
    import openvino

    capabilities = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return {
        name: precision
        for name, precision in OPENVINO_PRECISIONS.items()
        if precision == "f32" or precision.upper() in capabilities
    }


def export_openvino(endpoint: Endpoint, folder: Path, cache: bool = True) -> Path:
    """``folder/model.openvino.xml`` (+ ``.bin``, weights in fp32) converted from the endpoint's
    ONNX graph; ``folder`` is an export's staging folder, published whole."""
    import openvino

    with tempfile.TemporaryDirectory() as scratch:
        graph = export_onnx(
            endpoint, Path(scratch) / "graph.onnx", cache=cache, channels_last=False
        )
        model = openvino.convert_model(str(graph))
    path = folder / OPENVINO_FILE
    openvino.save_model(model, str(path), compress_to_fp16=False)
    return path
