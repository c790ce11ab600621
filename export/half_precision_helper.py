"""The helper process of :func:`cycada.export.graph_cache.start_half_precision_helper`: traces a
run's fp16 graphs into the graph cache while the exporter checks the fp32 ones."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from cycada.export.onnx_export import export_onnx
from cycada.export.run_models import load_run_endpoints


def _trace_half_graphs(run_dir: str, simplify: bool, stage: str | None) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        for position, endpoint in enumerate(load_run_endpoints(Path(run_dir), stage)):
            try:
                path = Path(scratch) / f"{position}.onnx"
                export_onnx(endpoint, path, half=True, simplify=simplify, cache=True)
            except Exception:  # the exporter traces this graph itself and reports any error
                continue


if __name__ == "__main__":  # python -m cycada.export.half_precision_helper RUN_DIR
    stages = [a.split("=", 1)[1] for a in sys.argv[2:] if a.startswith("--stage=")]
    _trace_half_graphs(sys.argv[1], "--simplify" in sys.argv[2:], (stages or [None])[0])
