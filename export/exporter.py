"""`cycada export RUN_DIR --repository DIR`: a training run → a versioned Triton repository."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import multiprocessing
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import torch
from safetensors.torch import save_file

from cycada.errors import ExportError
from cycada.export import compiled, graph_cache, openvino_export, parity, tensorrt_build
from cycada.export.onnx_export import OPSET, export_onnx, export_served
from cycada.export.repository import (
    INSTANCES,
    NativeProfile,
    StagedModel,
    exclusive,
    prune,
    publish,
    remove_staging,
    spec_for,
    stage_model,
    staging_root,
)
from cycada.export.run_models import load_run_endpoints
from cycada.export.runtime import RuntimeBuilder, default_pythons
from cycada.models.endpoints import Endpoint
from cycada.serving.engines import OPENVINO_FILE
from cycada.sizes import VIDEO_WIDTH


@dataclass
class ExportOptions:
    fp16: bool = True
    onnx: bool = True  # False: network weights only, for the PyTorch engine on a GPU
    simplify: bool = False  # one more onnxscript optimizer pass over the exported graphs
    tensorrt: bool = False
    int8_calibration: Path | None = None  # target-domain images for INT8 TensorRT plans
    trt_max_batch: int = 8
    # (height, width) of the TensorRT profiles (the command line takes WIDTHxHEIGHT: --trt-sizes)
    trt_shapes: tuple[tuple[int, int], ...] = ((256, 512), (512, 1024), (1024, 2048))
    keep: int = 3
    data_root: Path | None = None
    compile: bool = False  # also an AOTInductor package (model.pt2) for the PyTorch engine
    compile_device: str = "auto"  # the device it is compiled for: auto = cuda when present
    compile_size: tuple[int, int] | None = None  # (width, height) the package is tuned for
    compile_autotune: bool = False  # Inductor's max_autotune
    cache: bool = True  # reuse graphs exported before from the same weights (export.graph_cache)
    instances: int = INSTANCES  # Triton instances per model (repository.INSTANCES says why 2)
    # Python versions of the backend stubs the models carry packages for (export.runtime);
    # None: NVIDIA's 24.10 container's and this machine's
    runtime_pythons: list[str] | None = None
    stage: str | None = None  # the task model's stage; None: the run's verdict
    # on a host without CUDA: also convert for OpenVINO (when installed), time every CPU engine
    # on a frame of the width clients send (_timing_frame) and record the fastest whose labels
    # agree (engine_choice.json)
    cpu_engines: bool = field(
        default_factory=lambda: os.environ.get("CYCADA_EXPORT_CPU_ENGINES", "1") != "0"
    )


@dataclass
class ExportReport:
    versions: dict[str, Path] = field(default_factory=dict)
    rows: list[parity.ParityRow] = field(default_factory=list)
    seconds: float = 0.0

    def table(self) -> str:
        return parity.table(self.rows)


def _check_rows(rows: list[parity.ParityRow]) -> None:
    failed = [row for row in rows if not row.ok]
    if failed:
        worst = failed[0]
        raise ExportError(
            f"parity bound missed: {worst.endpoint} {worst.variant} {worst.metric} = "
            f"{worst.value:.6g} (bound {worst.bound:g}); nothing was written\n" + parity.table(rows)
        )


def _onnx_variants(
    endpoint: Endpoint,
    options: ExportOptions,
    version_dir: Path,
    images: list,
    reference: Callable,
    log: Callable[[str], None],
) -> tuple[Path, list[parity.ParityRow]]:
    """The served ONNX graph (fp32, and fp16 when asked) with their parity rows."""
    log(f"{endpoint.name}: ONNX fp32")
    logits_runner = checked = None
    with tempfile.TemporaryDirectory() as scratch:
        if endpoint.kind != "translate":
            checked = export_onnx(
                endpoint,
                Path(scratch) / "logits.onnx",
                logits=True,
                cache=options.cache,
                blocks=True,
            )
            logits_runner = parity.onnx_runner(checked)
        served = export_served(
            endpoint, version_dir / "model.onnx", checked, options.simplify, options.cache
        )
        runner = parity.onnx_runner(served)
        rows = parity.compare(
            endpoint, "onnx-fp32", reference, runner, images, False, logits_runner
        )
    if options.fp16:
        log(f"{endpoint.name}: ONNX fp16")
        half = export_onnx(
            endpoint,
            version_dir / "model.fp16.onnx",
            half=True,
            simplify=options.simplify,
            cache=options.cache,
        )
        rows += parity.compare(
            endpoint, "onnx-fp16", reference, parity.onnx_runner(half), images, True
        )
    return served, rows


def _compiled_package(
    endpoint: Endpoint,
    options: ExportOptions,
    version_dir: Path,
    served: Path,
    images: list,
    log: Callable[[str], None],
) -> tuple[list[parity.ParityRow], dict[str, float], torch.device]:
    """An AOTInductor package checked against the ONNX graph, its parity rows and the timings
    of the engines it competes with: on a CPU the package, on a GPU eager and the package with
    and without CUDA graphs (on a dashcam-sized frame)."""
    device = compiled.compile_device(options.compile_device)
    half = device.type == "cuda"  # what the PyTorch engine serves there (parameter precision)
    log(f"{endpoint.name}: AOTInductor package for {device.type} (compiling)")
    compiled.compile_package(
        endpoint, version_dir, device, half, options.compile_size, options.compile_autotune
    )
    package = compiled.package_runner(version_dir, device, half)
    rows = parity.compare(
        endpoint,
        f"aoti-{device.type}-{'fp16' if half else 'fp32'}",
        parity.onnx_runner(served),  # against the ONNX graph the other engines run
        package,
        images,
        True,
    )
    if device.type == "cpu":
        return (
            rows,
            {"pytorch": compiled.median_ms(package, _timing_frame(endpoint, images))},
            device,
        )
    frame = images[0]
    if endpoint.kind != "classify":
        height, width = compiled.TIMING_SIZE
        frame = cv2.resize(frame[0], (width, height), interpolation=cv2.INTER_LINEAR)[None]
    return rows, compiled.time_cuda_engines(endpoint, version_dir, device, half, frame), device


def _timing_frame(endpoint: Endpoint, images: list):
    """The first parity image as a batch at the width its clients send: segment-video's
    default for a segmentation, else the run's own width."""
    frame = images[0]
    width = VIDEO_WIDTH if endpoint.kind == "segment" else endpoint.meta.get("resize_width")
    if endpoint.kind == "classify" or not width or frame.shape[2] == width:
        return frame
    height = max(1, round(frame.shape[1] * int(width) / frame.shape[2]))
    return cv2.resize(frame[0], (int(width), height), interpolation=cv2.INTER_AREA)[None]


def _openvino_variants(
    endpoint: Endpoint,
    version_dir: Path,
    images: list,
    reference: Callable,
    served: Path,
    log: Callable[[str], None],
) -> tuple[list[parity.ParityRow], dict[str, float]]:
    """OpenVINO's conversion, its parity rows and timings (fp32, bf16 where the CPU has it),
    worked out in a child process (:func:`.openvino_export.convert_check_and_time` says why),
    from the ``served`` graph (a segmentation's in blocks, also OpenVINO's fastest form).
    A precision that misses a bound is left out of the choice, not fatal: ONNX Runtime serves
    then."""

    log(f"{endpoint.name}: OpenVINO conversion")
    expected = [reference(batch) for batch in images]
    described = dataclasses.replace(endpoint, network=None)  # what the parity rows name
    job = (served, version_dir, described, images, expected, _timing_frame(endpoint, images))
    context = multiprocessing.get_context("spawn")
    try:
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
            rows, timings, left_out = pool.submit(
                openvino_export.convert_check_and_time, *job
            ).result()
    except Exception as exc:  # OpenVINO is optional: a failure costs it, not the export
        for path in version_dir.glob(OPENVINO_FILE.replace(".xml", ".*")):
            path.unlink()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log(f"{endpoint.name}: OpenVINO left out ({first})")
        return [], {}
    for name, table in left_out.items():
        log(f"{endpoint.name}: {name} left out (parity)\n{table}")
    return rows, timings


def _tensorrt_plan(
    endpoint: Endpoint, options: ExportOptions, version_dir: Path, served: Path
) -> Path:
    """The plan of the served graph, or for a segmentation of its every-class form: the
    blocks' data-dependent shapes would cost a GPU more than the upsampling."""
    with tempfile.TemporaryDirectory() as scratch:
        graph = served
        if endpoint.kind == "segment":
            graph = export_onnx(endpoint, Path(scratch) / "graph.onnx", cache=options.cache)
        return tensorrt_build.build_plan(graph, version_dir / "model.plan", endpoint, options)


def _record_choice(
    endpoint: Endpoint,
    version_dir: Path,
    timings: dict[str, float],
    device,
    log: Callable[[str], None],
) -> None:
    fastest = compiled.record_engine_choice(version_dir, timings, device)
    shown = ", ".join(f"{name} {ms:.2f} ms" for name, ms in timings.items())
    log(f"{endpoint.name}: fastest engine here {fastest} ({shown})")


def _export_endpoint(
    endpoint: Endpoint, options: ExportOptions, report: ExportReport, log: Callable[[str], None]
) -> Callable[[Path], None]:
    """Returns the function that fills a version folder (export + parity, before any rename)."""

    def fill(version_dir: Path) -> None:
        # the weights too: the Python backend can run them with PyTorch on a GPU (no ORT-GPU)
        save_file(
            {k: v.contiguous() for k, v in endpoint.network.state_dict().items()},
            str(version_dir / "network.safetensors"),
        )
        if not options.onnx:
            log(f"{endpoint.name}: weights only (the Python backend runs them with PyTorch)")
            return
        images = parity.parity_images(endpoint, options.data_root)
        reference = parity.torch_runner(endpoint, logits=endpoint.kind != "translate")
        served, rows = _onnx_variants(endpoint, options, version_dir, images, reference, log)
        timings: dict[str, float] = {}
        device = torch.device("cpu")
        if options.compile:
            package_rows, timings, device = _compiled_package(
                endpoint, options, version_dir, served, images, log
            )
            rows += package_rows
        on_cpu = device.type == "cpu" and not torch.cuda.is_available()
        if on_cpu and (timings or (options.cpu_engines and openvino_export.available())):
            graph_cache.wait_for_helper()  # engines timed on a quiet machine
        if on_cpu and options.cpu_engines and openvino_export.available():
            openvino_rows, openvino_timings = _openvino_variants(
                endpoint, version_dir, images, reference, served, log
            )
            rows, timings = rows + openvino_rows, {**timings, **openvino_timings}
        if on_cpu and timings:  # something to choose between: ONNX Runtime on the same frame
            frame = _timing_frame(endpoint, images)
            timings["onnxruntime"] = compiled.median_ms(parity.onnx_runner(served), frame)
        if timings:
            _record_choice(endpoint, version_dir, timings, device, log)
        if options.tensorrt:
            log(f"{endpoint.name}: TensorRT plan")
            plan = _tensorrt_plan(endpoint, options, version_dir, served)
            runner = tensorrt_build.plan_runner(plan, endpoint)
            rows += parity.compare(endpoint, "tensorrt", reference, runner, images, True)
        report.rows.extend(rows)
        _check_rows(rows)

    return fill


def _link_files(source: Path, target: Path) -> None:
    """The encoded-frame model runs the segment model's files (hard links when possible)."""
    names = ("model.onnx", "model.fp16.onnx", "model.plan", "network.safetensors", "model.pt2")
    names += (OPENVINO_FILE, OPENVINO_FILE.replace(".xml", ".bin"))
    for name in (*names, "compiled.json", "engine_choice.json"):
        if (source / name).exists():
            try:
                os.link(source / name, target / name)
            except OSError:
                shutil.copy2(source / name, target / name)


def _stage_one(
    endpoint: Endpoint,
    repository: Path,
    options: ExportOptions,
    runtime: RuntimeBuilder,
    report: ExportReport,
    log: Callable[[str], None],
    export: dict,
    root: Path | None,
) -> list[StagedModel]:
    """The staged models of one endpoint (a segmenter's encoded-frame model beside it)."""
    names = endpoint.class_names if endpoint.kind == "segment" else ()
    spec = spec_for(
        endpoint.name, endpoint.kind, endpoint.in_channels, len(endpoint.class_names), names
    )
    info = {
        "endpoint": endpoint.name,
        "kind": endpoint.kind,
        "run": str(Path(endpoint.meta.get("checkpoint", ".")).resolve().parents[1]),
        "checkpoint": endpoint.meta.get("checkpoint"),
        "stage": endpoint.meta.get("stage"),
        "stage_choice": endpoint.meta.get("stage_choice"),
        "model": endpoint.meta.get("model"),
        "class_names": endpoint.class_names,
        "in_channels": endpoint.in_channels,
        "pad_multiple": endpoint.multiple,
        "network": endpoint.builder,
        "opset": OPSET,
        "onnx": options.onnx,
        "fp16": options.fp16 and options.onnx,
        "tensorrt": options.tensorrt,
        "compiled": options.compile,
        "export": export,  # which export wrote it, and every model it writes
    }
    if endpoint.kind == "segment":  # what the served signals are compared with
        info["baseline"] = endpoint.meta.get("baseline")
    fill = _export_endpoint(endpoint, options, report, log)
    native = NativeProfile(options.trt_max_batch, tuple(options.trt_shapes))
    stage = functools.partial(
        stage_model, repository, runtime=runtime, root=root, native=native,
        instances=options.instances,
    )  # fmt: skip
    staged = [stage(spec, fill, info)]
    if endpoint.kind == "segment":
        encoded = spec_for("segment_encoded", "encoded", 3, len(endpoint.class_names), names)
        info = {**info, "endpoint": "segment_encoded", "kind": "encoded"}
        staged.append(stage(encoded, functools.partial(_link_files, staged[0].version_dir), info))
    return staged


def export_run(
    run_dir: Path,
    repository: Path,
    options: ExportOptions | None = None,
    log: Callable[[str], None] = print,
) -> ExportReport:
    """Export every endpoint of ``run_dir`` into ``repository`` as a new version of each model."""
    options = options or ExportOptions()
    start = time.perf_counter()
    endpoints = load_run_endpoints(run_dir, options.stage)
    task = endpoints[0]
    log(f"{task.name}: the {task.meta['stage']} stage's model, {task.meta['stage_choice']}")
    if task.kind == "segment" and task.meta.get("baseline") is None:
        log(
            f"{task.name}: the run recorded no label-free signals for this stage: the served "
            "model has no baseline for `cycada monitor` (train with this cycada to record one)"
        )
    report = ExportReport()
    with exclusive(repository, log):
        runtime, added = None, []
        try:
            if options.onnx and options.fp16 and options.cache:
                graph_cache.start_half_precision_helper(run_dir, options.simplify, options.stage)
            runtime = RuntimeBuilder(options.runtime_pythons or default_pythons(), log)
            names = [e.name for e in endpoints]
            names += ["segment_encoded"] if any(e.kind == "segment" for e in endpoints) else []
            export = {"id": uuid.uuid4().hex[:12], "models": names}
            # every model built and checked before the first is published: a polling server
            # sees the export only as it lands, each model once
            root = staging_root(repository)
            staged = [
                model
                for endpoint in endpoints
                for model in _stage_one(
                    endpoint, repository, options, runtime, report, log, export, root
                )
            ]
            added = [model.model_dir for model in staged if not model.model_dir.exists()]
            for model in staged:
                report.versions[model.model_dir.name] = publish(model)
        except BaseException as exc:
            # all or nothing: the versions this export already published go again, and the
            # models it added
            for version_dir in report.versions.values():
                shutil.rmtree(version_dir, ignore_errors=True)
                if version_dir.parent in added:
                    shutil.rmtree(version_dir.parent, ignore_errors=True)
            if isinstance(exc, OSError):  # a full disk, a read-only repository
                raise ExportError(
                    f"export into {repository} failed: {exc}; the repository is as it was"
                ) from None
            raise
        finally:
            graph_cache.stop_helper()
            remove_staging(repository)
            if runtime is not None:
                runtime.close()
        for version_dir in report.versions.values():  # older versions go only after success
            prune(version_dir.parent, options.keep)
    report.seconds = time.perf_counter() - start
    return report
