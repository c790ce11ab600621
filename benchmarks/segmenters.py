"""Inference speed of the segmenters on this machine, every engine in one process: PyTorch eager,
an AOTInductor package, ONNX Runtime (CPU or CUDA), TensorRT.

    cycada bench segmenters --models fastscnn,drn26 --size 512x256

Every engine runs the same network on the same input in one process (median of ``--repeat``
timed runs after warm-up), so the ratio between them is meaningful on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cycada.bench_results import write_results
from cycada.sizes import image_size
from cycada.training.segmentation.networks import build_segmenter


def _median_ms(run, repeat: int) -> float:
    run()
    run()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


# AOTInductor packages compiled now, as `cycada export --compile` does: name → Inductor configs
COMPILED_ENGINES = {"aoti": {}, "aoti-autotune": {"max_autotune": True}}


def _compiled_ms(name, shape, device, configs, repeat, threads) -> float | str:
    """(In a child process.) Median ms of an AOTInductor package of the segmenter, fp16 on a
    GPU; the reason as a string when it cannot be built."""
    torch.set_num_threads(threads)
    target = torch.device(device)
    half = target.type == "cuda"
    model = build_segmenter(name, 19).eval().to(target)
    x = torch.zeros(*shape[:1], 3, *shape[1:], device=target)
    if half:
        model, x = model.half(), x.half()
        torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory() as folder:
        try:
            program = torch.export.export(model, (x,))
            package = torch._inductor.aoti_compile_and_package(
                program, package_path=str(Path(folder) / "model.pt2"), inductor_configs=configs
            )
            runner = torch._inductor.aoti_load_package(
                package, device_index=(target.index or 0) if half else -1
            )
        except Exception as exc:  # no compiler, an unsupported op: say so, go on
            return f"failed: {str(exc).strip().splitlines()[0][:120]}"

        def once():
            with torch.inference_mode():
                runner(x)
            if half:
                torch.cuda.synchronize()

        return _median_ms(once, repeat)


def _in_child(function, job: tuple) -> float | str:
    """``function(*job)`` in a fresh process: a compiled engine that crashes it (one segfaulted
    on load on an H200 with PyTorch 2.11) is reported, and the other engines still run."""
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        try:
            return pool.submit(function, *job).result()
        except concurrent.futures.process.BrokenProcessPool:
            return "crashed (the process died while compiling, loading or running it)"


def _onnx_ms(
    name: str, state: dict, shape: tuple, gpu: bool, wanted: tuple, threads: int, repeat: int
) -> dict[str, float | str]:
    """Median ms of ONNX Runtime's providers (``onnxruntime``: CUDA on a GPU, else CPU;
    ``tensorrt``) on the fp32 ONNX graph of the segmenter with these weights."""
    from cycada.deps import onnxruntime

    ort = onnxruntime()
    batch, height, width = shape
    timings: dict[str, float | str] = {}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{name}.onnx"
        cpu_model = build_segmenter(name, 19).eval()
        cpu_model.load_state_dict(state)
        torch.onnx.export(
            cpu_model,
            (torch.zeros(batch, 3, height, width),),
            str(path),
            opset_version=17,
            input_names=["images"],
            output_names=["scores"],
            dynamo=False,
        )
        available = ort.get_available_providers()
        feed = {"images": np.zeros((batch, 3, height, width), np.float32)}
        for engine in wanted:
            provider = {
                "onnxruntime": "CUDAExecutionProvider" if gpu else "CPUExecutionProvider",
                "tensorrt": "TensorrtExecutionProvider",
            }[engine]
            if provider not in available:
                timings[engine] = f"not available ({provider} missing)"
                continue
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            session = ort.InferenceSession(str(path), options, providers=[provider])
            timings[engine] = _median_ms(lambda s=session: s.run(None, feed), repeat)
    return timings


def bench(
    name: str,
    height: int,
    width: int,
    batch: int,
    threads: int,
    repeat: int,
    device: str = "cpu",
    engines: tuple[str, ...] = ("eager", "onnxruntime"),
) -> dict:
    """Median ms per batch of every engine asked for and available here, same input, one
    process (the compiled ones in a child process each): ``eager`` PyTorch (fp16 channels-last
    on CUDA), ``aoti`` and ``aoti-autotune`` (an AOTInductor package compiled now, as `cycada
    export --compile` does, without and with Inductor's max_autotune), ``onnxruntime`` (CUDA
    provider on a GPU, else CPU), ``tensorrt`` (ONNX Runtime's TensorRT provider, when
    installed)."""
    torch.set_num_threads(threads)
    target = torch.device(device)
    half = target.type == "cuda"
    model = build_segmenter(name, 19).eval().to(target)
    x = torch.zeros(batch, 3, height, width, device=target)
    if half:  # as the serving engine runs it: fp16, NHWC, cuDNN autotuned
        model = model.half().to(memory_format=torch.channels_last)
        x = x.half().to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True

    def timed(run) -> float:
        def once():
            run()
            if half:
                torch.cuda.synchronize()

        return _median_ms(once, repeat)

    timings: dict[str, float | str] = {}
    with torch.inference_mode():
        if "eager" in engines:
            timings["eager"] = timed(lambda: model(x))
            print(json.dumps({"engine": "eager", "ms": timings["eager"]}), flush=True)
    for engine, configs in COMPILED_ENGINES.items():
        if engine in engines:
            started = time.perf_counter()
            job = (name, (batch, height, width), device, configs, repeat, threads)
            timings[engine] = _in_child(_compiled_ms, job)
            seconds = round(time.perf_counter() - started, 1)
            row = {"engine": engine, "ms": timings[engine], "compile_and_time_s": seconds}
            print(json.dumps(row), flush=True)
    wanted = tuple(e for e in ("onnxruntime", "tensorrt") if e in engines)
    if wanted:
        state = {k: v.float().cpu() for k, v in model.state_dict().items()}
        timings.update(_onnx_ms(name, state, (batch, height, width), half, wanted, threads, repeat))
    measured = {k: v for k, v in timings.items() if isinstance(v, float)}
    return {
        "model": name,
        "device": torch.cuda.get_device_name(target) if half else "cpu",
        "input": f"{batch}x3x{height}x{width}" + (" fp16" if half else ""),
        "threads": threads,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "ms": {k: round(v, 2) if isinstance(v, float) else v for k, v in timings.items()},
        "fps": {k: round(1000 * batch / v, 1) for k, v in measured.items()},
        "fastest": min(measured, key=measured.get) if measured else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fastscnn,drn26")
    parser.add_argument("--size", type=image_size, default=(512, 256), help="WIDTHxHEIGHT")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument(
        "--engines",
        default="eager,aoti,onnxruntime,tensorrt",
        help="comma-separated: eager, aoti, aoti-autotune (Inductor's max_autotune), "
        "onnxruntime, tensorrt (those missing are reported)",
    )
    parser.add_argument("--out", type=Path, help="write segmenters.json here")
    args = parser.parse_args(argv)
    width, height = args.size
    rows = []
    for name in args.models.split(","):
        engines = tuple(args.engines.split(","))
        rows.append(
            bench(name, height, width, args.batch, args.threads, args.repeat, args.device, engines)
        )
        print(json.dumps(rows[-1]))
    write_results(args.out, "segmenters", {"size": [width, height], "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
