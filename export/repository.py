"""The Triton model repository: one model per endpoint, four deployment profiles, versions.

Layout of one model::

    segment/
      config.pbtxt              default profile: Python backend running ONNX Runtime
      configs/onnxruntime.pbtxt native onnxruntime backend, TensorRT accelerator in FP16
      configs/tensorrt.pbtxt    native TensorRT plan
      configs/openvino.pbtxt    native OpenVINO on the CPU (its conversion of the graph)
      3/ model.onnx model.fp16.onnx [model.plan] [model.openvino.xml/.bin] model.py
         endpoint.json [engine_choice.json]

A profile is picked at server start with ``--model-config-name``. A native profile's config is
written only when the new version has its file (``model.onnx``, ``model.plan``,
``model.openvino.xml``); without it the
model falls back to ``config.pbtxt``, so every profile loads every model. The encoded-frame
endpoint is Python in every profile. Each model folder also carries its runtime (code and
packages for the Python-backend stub, :mod:`cycada.export.runtime`).

Exporting again writes version N+1 of every model. An export builds and checks all its models in
a hidden folder beside the repository (:func:`staging_root`), then publishes them one after the
other: the runtime when new, the version folder (fsynced with ordinary modes, renamed into place:
a polling server never sees half of it, and reloads each model once), then the configs when they
changed; all but the newest ``keep`` versions are deleted; the server loads the newest two.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cycada.atomic import make_output_folder, publish_folder, write_text_atomic
from cycada.export.runtime import (
    RUNTIME_FOLDER,
    RuntimeBuilder,
    model_py,
    referenced_runtimes,
)
from cycada.serving.engines import OPENVINO_FILE

PROFILES = ("default", "onnxruntime", "tensorrt", "openvino")
SERVED_VERSIONS = 2
STAGING_FOLDER = ".export"  # a model folder's own staging, where staging_root() has none
WARMUP_SHAPE = (256, 512)  # height, width of the warm-up request of image endpoints
MAX_BATCH = {"segment": 8, "translate": 8, "classify": 256, "encoded": 8}


@dataclass(frozen=True)
class NativeProfile:
    """What the native profiles' configs must agree with: the TensorRT plans' optimization
    profile (batch up to ``max_batch``, sizes from the smallest to the largest of ``shapes``,
    height x width) and where ONNX Runtime keeps the TensorRT engines it builds."""

    max_batch: int = 8
    shapes: tuple[tuple[int, int], ...] = ((256, 512), (512, 1024), (1024, 2048))
    trt_cache: str = "/tmp/cycada-trt-cache"


def plan_profile(kind: str, native: NativeProfile, digit_size: int = 28):
    """(max batch, [(height, width) min, opt, max]) of a model's TensorRT optimization profile:
    digits are fixed-size images in batches of up to 256; images follow ``native``."""
    if kind == "classify":
        side = (digit_size, digit_size)
        return MAX_BATCH["classify"], [side, side, side]
    shapes = sorted(native.shapes, key=lambda s: s[0] * s[1])
    return native.max_batch, [shapes[0], shapes[len(shapes) // 2], shapes[-1]]


@dataclass
class ModelSpec:
    """What a config needs: tensor names, dtypes, dims (without the batch dim)."""

    name: str
    kind: str  # segment | translate | classify | encoded
    inputs: list[tuple[str, str, list[int]]]
    outputs: list[tuple[str, str, list[int]]]
    python_handler: str  # class in cycada.serving.python_model the model.py exposes
    parameters: dict[str, str] = field(default_factory=dict)


def spec_for(
    name: str, kind: str, in_channels: int, num_classes: int, class_names: Sequence[str] = ()
) -> ModelSpec:
    """``class_names`` (a segmenter's, in id order) go into the config as the parameter
    ``class_names`` (comma-separated), so clients name, colour and count what the model
    answers without knowing how it was trained."""
    image = ("images", "TYPE_UINT8", [-1, -1, in_channels])
    names = {"class_names": ",".join(class_names)} if class_names else {}
    if any("," in name for name in class_names):
        raise ValueError(f"class names must not contain commas: {list(class_names)}")
    if kind == "segment":
        outputs = [("labels", "TYPE_UINT8", [-1, -1]), ("confidence", "TYPE_UINT8", [-1, -1])]
        return ModelSpec(name, kind, [image], outputs, "ImageModel", names)
    if kind == "translate":
        outputs = [("translated", "TYPE_UINT8", [-1, -1, in_channels])]
        return ModelSpec(name, kind, [image], outputs, "ImageModel")
    if kind == "classify":
        outputs = [("class_ids", "TYPE_UINT8", [1]), ("probabilities", "TYPE_FP32", [num_classes])]
        return ModelSpec(name, kind, [image], outputs, "ImageModel")
    if kind == "encoded":
        outputs = [("labels", "TYPE_UINT8", [-1, -1]), ("confidence", "TYPE_UINT8", [-1, -1])]
        frames = [("frames", "TYPE_UINT8", [-1])]  # one frame's bytes per row, ragged
        return ModelSpec(
            name, kind, frames, outputs, "EncodedFrameModel", {"segment_model": "segment", **names}
        )
    raise ValueError(f"unknown endpoint kind '{kind}'")


def _tensors(section: str, tensors: list[tuple[str, str, list[int]]], ragged: bool = False) -> str:
    extra = " allow_ragged_batch: true" if ragged else ""
    items = ",\n".join(
        f'  {{ name: "{name}" data_type: {dtype} dims: [ {", ".join(map(str, dims))} ]{extra} }}'
        for name, dtype, dims in tensors
    )
    return f"{section} [\n{items}\n]\n"


def _warmup(spec: ModelSpec, profile: str, native: NativeProfile) -> str:
    if spec.kind == "encoded":
        return ""  # a zero-filled frame is not a decodable image
    name, _, dims = spec.inputs[0]
    shape = [28, 28, dims[-1]] if spec.kind == "classify" else [*WARMUP_SHAPE, dims[-1]]
    if profile == "tensorrt":  # inside the plan's optimization profile, or the plan refuses it
        _, (low, _, _) = plan_profile(spec.kind, native)
        shape = [*low, dims[-1]]
    return (
        'model_warmup [\n  {\n    name: "zeros"\n    batch_size: 1\n'
        f'    inputs {{ key: "{name}" value: {{ data_type: TYPE_UINT8 '
        f"dims: [ {', '.join(map(str, shape))} ] zero_data: true }} }}\n  }}\n]\n"
    )


MAX_QUEUE = 128  # requests waiting per model
# Two instances and no batching delay. Triton 2.51's dynamic batcher wakes only when a request
# arrives while an instance is free; a request that lands between a response being sent and
# its instance being released waits out the batcher's fixed 500 ms idle timeout. A client that
# sends the next request as soon as it has an answer hits that window every second or so (one
# instance: 4-32 requests of 510-540 ms in 8 s at concurrency 1-4, BENCHMARKS.md "Triton's
# batcher"). A second instance keeps a slot free when the request arrives, and with no delay a
# batch is whatever queued while the instances were busy: on 2 CPU cores 1.2-1.4x the
# throughput and no stall, for twice the stubs' memory.
INSTANCES = 2
MAX_QUEUE_DELAY_US = 0


def config_text(
    spec: ModelSpec,
    profile: str,
    native: NativeProfile | None = None,
    instances: int = INSTANCES,
) -> str:
    """config.pbtxt text of ``spec`` for a deployment profile; ``native`` (the export's TensorRT
    options) sizes the tensorrt profile's batch and warm-up and the ORT engine cache."""
    native = native or NativeProfile()
    lines = [f'name: "{spec.name}"']
    if profile == "default" or spec.kind == "encoded":
        lines.append('backend: "python"')
    elif profile == "onnxruntime":
        lines += ['backend: "onnxruntime"', 'default_model_filename: "model.onnx"']
    elif profile == "tensorrt":
        lines += ['platform: "tensorrt_plan"', 'default_model_filename: "model.plan"']
    elif profile == "openvino":
        lines += ['backend: "openvino"', f'default_model_filename: "{OPENVINO_FILE}"']
    else:
        raise ValueError(f"unknown profile '{profile}' (valid: {', '.join(PROFILES)})")
    max_batch = MAX_BATCH[spec.kind]
    if profile == "tensorrt" and spec.kind != "encoded":
        max_batch, _ = plan_profile(spec.kind, native)  # the plan accepts no larger batch
    lines.append(f"max_batch_size: {max_batch}")
    text = "\n".join(lines) + "\n"
    # encoded frames differ in length: ragged batching lets the batcher group them anyway
    text += _tensors("input", spec.inputs, ragged=spec.kind == "encoded")
    text += _tensors("output", spec.outputs)
    # a bounded queue: past it a request is refused at once (UNAVAILABLE, which clients retry
    # with backoff) instead of waiting behind an ever longer queue on an overloaded server
    text += (
        f"dynamic_batching {{ max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US} "
        f"default_queue_policy {{ max_queue_size: {MAX_QUEUE} }} }}\n"
    )
    is_native = profile != "default" and spec.kind != "encoded"
    kind = "KIND_GPU" if is_native and profile != "openvino" else "KIND_CPU"
    text += f"instance_group [ {{ kind: {kind} count: {instances} }} ]\n"
    text += f"version_policy: {{ latest: {{ num_versions: {SERVED_VERSIONS} }} }}\n"
    if is_native and profile == "onnxruntime":
        text += (
            "optimization { execution_accelerators { gpu_execution_accelerator: [ {\n"
            '  name: "tensorrt"\n'
            '  parameters { key: "precision_mode" value: "FP16" }\n'
            '  parameters { key: "max_workspace_size_bytes" value: "4294967296" }\n'
            # engines are kept across restarts and resolutions, not rebuilt at every start
            '  parameters { key: "trt_engine_cache_enable" value: "true" }\n'
            '  parameters { key: "trt_engine_cache_path" '
            f'value: "{native.trt_cache}/{spec.name}" }}\n'
            "} ] } }\n"
        )
    if is_native:  # backends ignore parameters they do not know; clients read the classes
        parameters = {k: v for k, v in spec.parameters.items() if k == "class_names"}
    else:
        parameters = {"handler": spec.python_handler, **spec.parameters}
        if spec.kind != "classify":  # the pixels one engine run may hold: the largest export
            largest = max(height * width for height, width in native.shapes)
            parameters["max_batch_pixels"] = str(native.max_batch * largest)
    text += "".join(
        f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'
        for key, value in parameters.items()
    )
    return text + _warmup(spec, profile, native)


def validate_config(text: str, where: str) -> None:
    """Parse ``text`` with Triton's model_config protobuf (from tritonclient) when installed."""
    try:
        # tritonclient takes a second to import: only when a server is called (export's command
        # line imports this module)
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return
    try:
        text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ValueError(f"{where}: not a valid Triton model config ({exc})") from exc


PROFILE_FILES = {"onnxruntime": "model.onnx", "tensorrt": "model.plan", "openvino": OPENVINO_FILE}


def config_path(model_dir: Path, profile: str) -> Path:
    return model_dir / ("config.pbtxt" if profile == "default" else f"configs/{profile}.pbtxt")


def profiles_served(spec: ModelSpec, version_dir: Path) -> list[str]:
    """The profiles that can load this version natively (Python-backend models: all)."""
    if spec.kind == "encoded":
        return list(PROFILES)
    return ["default", *(p for p, name in PROFILE_FILES.items() if (version_dir / name).exists())]


def versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def staging_root(repository: Path) -> Path | None:
    """Where an export builds its models before any is published: a hidden sibling of the
    repository, ``.<name>.export``, on the same file system (a rename moves a folder in).

    Not inside a model folder: a polling server reloads a model when anything under its folder
    changes, so a version written there reloads the model once as it starts and again as it
    lands. Not in the repository's top folder: Triton loads every folder there, hidden ones
    too, as a model. None where the parent is not writable or is another file system (a
    repository that is itself a mount point): each model folder then stages its own, which
    costs that extra reload."""
    root = _beside(repository)
    with contextlib.suppress(OSError):  # not writable, not there: staged in the model folders
        if root is not None:
            root.mkdir(exist_ok=True)
            if root.stat().st_dev == repository.stat().st_dev:
                return root
            root.rmdir()
    return None


def _beside(repository: Path) -> Path | None:
    """``.<name>.export`` beside the repository (None for a file system's root)."""
    repository = repository.resolve()
    if repository == repository.parent:
        return None
    return repository.parent / f".{repository.name}.export"


@dataclass(frozen=True)
class StagedModel:
    """One model of an export, built and checked, not yet in the repository."""

    model_dir: Path  # where it is published
    version: int
    folder: Path  # the staged model folder: the version, the runtime when new
    runtime: str  # the runtime folder's name the version runs
    configs: dict[Path, str]  # every config the version is served with → its text

    @property
    def version_dir(self) -> Path:
        return self.folder / str(self.version)


def stage_model(
    repository: Path,
    spec: ModelSpec,
    fill_version: Callable[[Path], None],
    info: dict,
    runtime: RuntimeBuilder,
    root: Path | None,
    native: NativeProfile | None = None,
    instances: int = INSTANCES,
) -> StagedModel:
    """Build the model's next version (filled by ``fill_version``), its configs and, when the
    model lacks it, its runtime under ``root`` (:func:`staging_root`; None stages in the model
    folder). Nothing in the repository changes."""
    model_dir = repository / spec.name
    version = (versions(model_dir) or [0])[-1] + 1
    folder = root / spec.name if root is not None else model_dir / STAGING_FOLDER
    staged_version = folder / str(version)
    staged_version.mkdir(parents=True)
    fill_version(staged_version)
    configs = {
        config_path(model_dir, profile): config_text(spec, profile, native, instances)
        for profile in profiles_served(spec, staged_version)
    }
    for path, text in configs.items():
        validate_config(text, str(path))
    carried = runtime.install(model_dir, spec.kind, staged_version, folder)
    (staged_version / "model.py").write_text(model_py(spec.python_handler, carried))
    # a file where the stub would write model.py's bytecode: Python then writes none (it
    # cannot make the folder), so a polling server never sees the version change and load
    # the model again (model.py's own imports write none either: dont_write_bytecode)
    (staged_version / "__pycache__").touch()
    info = {**info, "version": version, "runtime": carried}
    (staged_version / "endpoint.json").write_text(json.dumps(info, indent=2))
    return StagedModel(model_dir, version, folder, Path(carried["folder"]).name, configs)


def publish(staged: StagedModel) -> Path:
    """Move a staged model into the repository; returns its version folder. A new model is one
    rename of its whole folder; a new version of a served one is its runtime (when new), then
    the version, then the configs that changed, so a polling server reloads it once."""
    model_dir = staged.model_dir
    if not model_dir.exists():
        for path, text in staged.configs.items():
            target = staged.folder / path.relative_to(model_dir)
            target.parent.mkdir(exist_ok=True)
            target.write_text(text)
        try:
            publish_folder(staged.folder, model_dir)
            return model_dir / str(staged.version)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            model_dir.mkdir()  # moved in part by part below (a hidden copy in the repository's
            # top folder would be loaded as a model)
    runtime = staged.folder / RUNTIME_FOLDER / staged.runtime
    if runtime.is_dir():
        (model_dir / RUNTIME_FOLDER).mkdir(exist_ok=True)
        _rename_in(runtime, model_dir / RUNTIME_FOLDER / staged.runtime)
    _rename_in(staged.version_dir, model_dir / str(staged.version))
    # configs last (a failed export leaves the model as it was), and only when they changed:
    # a polling server reloads a model whose config file changed
    for profile in PROFILES:
        path = config_path(model_dir, profile)
        if path not in staged.configs:
            path.unlink(missing_ok=True)  # falls back to config.pbtxt
        elif not path.exists() or path.read_text() != staged.configs[path]:
            write_text_atomic(path, staged.configs[path])
    shutil.rmtree(staged.folder, ignore_errors=True)  # the fallback's folder in the model's
    return model_dir / str(staged.version)


def _rename_in(source: Path, target: Path) -> None:
    """:func:`publish_folder`, through a hidden copy beside ``target`` where the rename would
    cross file systems (a bind mount of the same device passes the staging check)."""
    try:
        publish_folder(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        copy = target.with_name(f".{target.name}.partial")
        shutil.copytree(source, copy, symlinks=True)
        publish_folder(copy, target)


def write_model(
    repository: Path,
    spec: ModelSpec,
    fill_version: Callable[[Path], None],
    info: dict,
    runtime: RuntimeBuilder,
    keep: int = 3,
    native: NativeProfile | None = None,
    instances: int = INSTANCES,
) -> Path:
    """One model's new version staged, published and its old versions pruned (an export of
    several models stages them all first: :func:`cycada.export.exporter.export_run`)."""
    repository.mkdir(parents=True, exist_ok=True)
    root = staging_root(repository)
    try:
        staged = stage_model(repository, spec, fill_version, info, runtime, root, native, instances)
        version_dir = publish(staged)
    finally:
        remove_staging(repository)
    prune(version_dir.parent, keep)
    return version_dir


@contextlib.contextmanager
def exclusive(repository: Path, log: Callable[[str], None] = print) -> Iterator[None]:
    """One export at a time per repository (an OS lock, released even by kill -9): two at once
    would both claim version N+1."""
    make_output_folder(repository, "--repository")
    with open(repository / ".export.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another export into {repository} is running: waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            remove_staging(repository)
            repair_incomplete_export(repository, log)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def copy_version(version_dir: Path, model_dir: Path) -> Path:
    """``version_dir`` into ``model_dir`` with the runtime it names: what a repository of that
    one version needs. Copies, not hard links: a polling server reloads a model when one of its
    files gains a link (export.runtime says more), and the source may be served."""
    target = model_dir / version_dir.name
    shutil.copytree(version_dir, target, symlinks=True)
    named = referenced_runtimes(version_dir.parent, [int(version_dir.name)])
    for name in named or []:
        source = version_dir.parent / RUNTIME_FOLDER / name
        if source.is_dir() and not (model_dir / RUNTIME_FOLDER / name).exists():
            shutil.copytree(source, model_dir / RUNTIME_FOLDER / name)
    return target


def remove_staging(repository: Path) -> None:
    """What exports staged and did not publish: the folder beside the repository and the
    fallback's folders in the models (after an export, or left by one that died: kill -9, power
    loss). Called with the lock held, so no export is writing them. No server loaded them."""
    beside = _beside(repository)
    leftovers = [
        *([beside] if beside is not None else []),
        *repository.glob(f"*/{STAGING_FOLDER}"),
        *repository.glob("*/.*.partial"),  # a copy across file systems, or an older cycada's
        *repository.glob(f"*/{RUNTIME_FOLDER}/.*"),
    ]
    for staging in leftovers:
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)


def _export_record(version_dir: Path) -> dict | None:
    """Which export wrote a version: {"id", "models"} from its endpoint.json (None before
    exports recorded it)."""
    try:
        record = json.loads((version_dir / "endpoint.json").read_text()).get("export")
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "id" in record else None


def repair_incomplete_export(repository: Path, log: Callable[[str], None] = print) -> None:
    """The versions of an export that died between models (kill -9 after some models had
    their new version) are removed: every model is back at the export before, and the next
    one numbers them alike. An export is incomplete when a model it wrote lacks a version of
    it (models an export did not write keep their own)."""
    models = [p for p in repository.iterdir() if p.is_dir() and (p / "config.pbtxt").exists()]
    ids = {
        model.name: {(_export_record(model / str(v)) or {}).get("id") for v in versions(model)}
        for model in models
    }
    for model in models:
        numbers = versions(model)
        record = _export_record(model / str(numbers[-1])) if numbers else None
        if record is None:
            continue
        missing = [name for name in record["models"] if record["id"] not in ids.get(name, ())]
        if missing:
            log(
                f"{model.name} version {numbers[-1]}: its export stopped before "
                f"{', '.join(missing)}; removed so every model is at the same export"
            )
            shutil.rmtree(model / str(numbers[-1]))


def prune(model_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` versions (0 keeps everything), then the runtimes no
    remaining version names."""
    for old in versions(model_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(model_dir / str(old))
    named = referenced_runtimes(model_dir, versions(model_dir))
    folder = model_dir / RUNTIME_FOLDER
    if named is None or not folder.is_dir():
        return
    for runtime in folder.iterdir():
        if runtime.name not in named and not runtime.name.startswith("."):
            shutil.rmtree(runtime, ignore_errors=True)
