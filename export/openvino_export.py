"""OpenVINO's conversion of a serving graph: a CPU engine the export times beside ONNX Runtime.

OpenVINO is optional (the ``[cpu]`` extra): without it the export goes on with ONNX Runtime
alone. The conversion (``model.openvino.xml`` and ``.bin``) is read by the Python backend's
:class:`~cycada.serving.engines.OpenVinoEngine` and by Triton's own openvino backend (the
``openvino`` profile). It is converted from the served ONNX graph (a segmentation's upsamples
two classes a block, :mod:`cycada.models.block_labels`: OpenVINO's fastest form too).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from cycada.export import parity
from cycada.export.onnx_export import output_names
from cycada.models.endpoints import Endpoint
from cycada.serving.engines import OPENVINO_FILE, OPENVINO_PRECISIONS, OpenVinoEngine


def available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def precisions() -> dict[str, str]:
    """Engine name → precision of the OpenVINO engines this CPU runs: fp32, and bf16 where the
    CPU computes in it (AVX-512 BF16, AMX)."""
    # optional: OpenVINO is an extra, and runs in a child process of its own
    import openvino

    capabilities = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return {
        name: precision
        for name, precision in OPENVINO_PRECISIONS.items()
        if precision == "f32" or precision.upper() in capabilities
    }


def convert_check_and_time(
    graph: Path,
    folder: Path,
    endpoint: Endpoint,
    images: list[np.ndarray],
    expected: list[list[np.ndarray]],
    frame: np.ndarray,
) -> tuple[list[parity.ParityRow], dict[str, float], dict[str, str]]:
    """(In a child process.) ``folder/model.openvino.xml`` (+ ``.bin``, weights in fp32)
    converted from the ONNX ``graph``; per precision this CPU runs, its parity rows against the
    reference outputs ``expected`` of ``images`` and its median time on ``frame``. Returns the
    rows and timings of the precisions that pass, and the parity table of those that do not.

    A child process, because OpenVINO's thread pool does not survive a fork: a process that
    had run it crashed when it later started PyTorch DataLoader workers (a training after an
    export, as ``cycada demo`` runs them)."""
    # optional: OpenVINO is an extra, and runs in a child process of its own
    import openvino

    from cycada.export import compiled

    path = folder / OPENVINO_FILE
    # Core.read_model, not convert_model: the converter forks telemetry senders (six Python
    # processes per conversion here, which slowed the timing below 2-6x)
    model = openvino.Core().read_model(str(graph))
    openvino.save_model(model, str(path), compress_to_fp16=False)
    names = output_names(endpoint)
    rows, runs, left_out = [], {}, {}
    for name, precision in precisions().items():
        engine = OpenVinoEngine(path, precision)

        def run(batch, engine=engine):
            return engine.run(batch, names)

        replay = iter(expected)  # compare asks for the reference of each image in turn
        checked = parity.compare(
            endpoint, name, lambda _, outputs=replay: next(outputs), run, images, precision != "f32"
        )
        if all(row.ok for row in checked):
            rows, runs[name] = rows + checked, run
        else:
            left_out[name] = parity.table(checked)
    # the best of three rounds, the precisions in turn: a process's first seconds ran
    # OpenVINO 2-6x slower than its later ones here, which one round would charge to fp32
    timings = {name: float("inf") for name in runs}
    for _ in range(3):
        for name, run in runs.items():
            timings[name] = min(timings[name], compiled.median_ms(run, frame))
    return rows, timings, left_out
