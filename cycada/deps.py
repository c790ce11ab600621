"""Optional dependencies with a clear message when one is missing.

ONNX Runtime comes in two distributions that install the same module, ``onnxruntime`` (CPU)
and ``onnxruntime-gpu`` (CUDA, TensorRT), so it is an extra: ``cycada[cpu]`` or ``cycada[gpu]``.
"""

from __future__ import annotations

from types import ModuleType

from cycada.errors import CycadaError


def onnxruntime() -> ModuleType:
    try:
        # optional: which ONNX Runtime build is installed is what this asks
        import onnxruntime as ort
    except ImportError:
        raise CycadaError(
            "ONNX Runtime is not installed: pip install 'cycada[cpu]' (or 'cycada[gpu]' on a "
            "CUDA host; see the README)"
        ) from None
    return ort
