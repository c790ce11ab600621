"""Inference speed of the segmenters on this machine: PyTorch eager vs ONNX Runtime (CPU).

    cycada bench segmenters --models fastscnn,drn26 --size 512x256

Both engines run the same network on the same input in one process (median of ``--repeat``
timed runs after warm-up), so the ratio between them is meaningful on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cycada.bench_results import write_results
from cycada.sizes import image_size
from cycada.training.models.segmenters import build_segmenter


def _median_ms(run, repeat: int) -> float:
    run()
    run()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def bench(name: str, height: int, width: int, batch: int, threads: int, repeat: int) -> dict:
    from cycada.deps import onnxruntime

    ort = onnxruntime()

    torch.set_num_threads(threads)
    model = build_segmenter(name, 19).eval()
    x = torch.zeros(batch, 3, height, width)
    with torch.no_grad():
        eager_ms = _median_ms(lambda: model(x), repeat)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{name}.onnx"
        torch.onnx.export(
            model,
            (x,),
            str(path),
            opset_version=17,
            input_names=["images"],
            output_names=["scores"],
            dynamo=False,
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {"images": x.numpy()}
        ort_ms = _median_ms(lambda: session.run(None, feed), repeat)
    return {
        "model": name,
        "input": f"{batch}x3x{height}x{width}",
        "threads": threads,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "pytorch_ms": round(eager_ms, 1),
        "onnxruntime_ms": round(ort_ms, 1),
        "onnxruntime_fps": round(1000 * batch / ort_ms, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fastscnn,drn26")
    parser.add_argument("--size", type=image_size, default=(512, 256), help="WIDTHxHEIGHT")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--out", type=Path, help="write segmenters.json here")
    args = parser.parse_args(argv)
    width, height = args.size
    rows = []
    for name in args.models.split(","):
        rows.append(bench(name, height, width, args.batch, args.threads, args.repeat))
        print(json.dumps(rows[-1]))
    write_results(args.out, "segmenters", {"size": [width, height], "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
