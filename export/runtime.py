"""What a Python-backend model carries so that any Triton Python backend serves it.

NVIDIA's Triton container runs a Python-backend model in a stub process whose Python has NumPy
and nothing else: no cycada, no ONNX Runtime, no OpenCV. So every model folder of an exported
repository carries what its ``model.py`` imports::

    segment/runtime/<key>/code/cycada/...    the cycada code that exported it (pure Python)
    segment/runtime/<key>/py310/...          its packages for a Python 3.10 stub (the container)
    segment/runtime/<key>/py311/...          ... and for this machine's Python

and each version's ``model.py`` puts ``code/`` and the folder of the stub's Python first on
``sys.path`` (the stub imports ``model.py`` as a plain module; the stub's own NumPy is used).

Why vendored folders and not Triton's ``EXECUTION_ENV_PATH`` with a packed environment: a packed
environment holds one Python version, which must equal the stub's, and is built with an
interpreter of that version; Triton unpacks it into /tmp at every load. Wheels for any Python
version can be fetched without its interpreter (``pip download --python-version``), binary
packages only differ per version (OpenCV's abi3 wheel serves them all), and plain folders need
no unpacking. Every version of an export with the same code and packages shares one ``<key>``
folder; pruning a model's versions removes the runtimes no version names any more.

A repository's runtime files share no inode with anything outside it, nor with a file published
before: an export copies them from the cache ($CYCADA_CACHE_DIR/runtime) into its staged models
once and hard-links the staged models after the first to that copy. A polling Triton reloads a
model when any file under its folder changes, and a new hard link changes a file (its ctime):
with links into the cache, every later export on the machine, into any repository, made each
polling server reload every model.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.version import InvalidVersion, Version

import cycada
from cycada.atomic import publish_folder
from cycada.cache import cache_root
from cycada.errors import ConfigError, ExportError

# NVIDIA's Triton image of the embedded server's release (Triton 2.51 is the 24.10 container):
# the reference deployment (deploy/). It runs the Python backend on Ubuntu 22.04's Python 3.10
# and glibc 2.35.
EMBEDDED_TRITON = "2.51.0"
CONTAINER_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
CONTAINER_PYTHON = "3.10"
CONTAINER_GLIBC = 35
RUNTIME_FOLDER = "runtime"
# the cycada packages a Python-backend model can import (the PyTorch engine rebuilds the
# network from cycada.training); the command-line clients and benchmarks stay out. ``cycada``
# itself is its own modules only (installed, its folder also holds the subpackages).
CODE_PACKAGES = ("cycada", "cycada.models", "cycada.serving")
DECODER = "opencv-python-headless"  # the encoded-frame model decodes JPEG/PNG with OpenCV


def onnxruntime_distribution() -> tuple[str, str] | None:
    """(name, version) of the ONNX Runtime installed here (CPU or GPU build), None if none."""
    for name in ("onnxruntime-gpu", "onnxruntime"):
        try:
            return name, metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def default_pythons() -> list[str]:
    """The container's Python and this machine's (the embedded server's stub runs it)."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    return sorted({CONTAINER_PYTHON, here}, key=lambda v: tuple(map(int, v.split("."))))


def parse_pythons(text: str) -> list[str]:
    """``--runtime-python 3.10,3.11`` → ["3.10", "3.11"]."""
    versions = [part.strip() for part in text.split(",") if part.strip()]
    for version in versions:
        major, _, minor = version.partition(".")
        if not (major == "3" and minor.isdigit() and 8 <= int(minor) <= 13):
            raise ConfigError(
                f"--runtime-python {text!r}: expected Python versions like 3.10,3.11 (3.8-3.13, "
                "the versions Triton's Python-backend stub is built for)"
            )
    return versions


def _tag(python: str) -> str:
    return "py" + python.replace(".", "")


def _serves(wheel_tag: str, python: str) -> bool:
    """Whether a wheel tag (``cp311-cp311-manylinux...``, ``cp37-abi3-...``) runs on ``python``."""
    interpreter, abi, _ = wheel_tag.split("-", 2)
    minor = int(python.split(".")[1])
    if abi == "none":
        return interpreter.startswith("py3") or interpreter == f"cp3{minor}"
    if abi == "abi3":
        return interpreter.startswith("cp3") and int(interpreter[3:]) <= minor
    return interpreter == f"cp3{minor}"


def _copy_or_link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


def _fill_once(folder: Path, fill: Callable[[Path], None]) -> Path:
    """``folder`` filled by ``fill`` once (staged and renamed: a failed fill leaves nothing)."""
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        fill(staging)
        try:
            publish_folder(staging, folder)
        except OSError:
            if not folder.is_dir():  # not another export filling the same folder first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


@dataclass(frozen=True)
class Package:
    """One distribution unpacked for some Python versions, in the cache."""

    name: str
    version: str
    wheel_tag: str
    folder: Path


class RuntimeBuilder:
    """Gathers the code and packages of one export (once) and installs them into model folders."""

    def __init__(self, pythons: Sequence[str], log: Callable[[str], None] = print):
        self.pythons = list(pythons)
        self.log = log
        root = cache_root()
        self._scratch = None if root else tempfile.TemporaryDirectory(prefix="cycada-runtime-")
        self.cache = (root or Path(self._scratch.name)) / "runtime"
        self.code, self.code_hash = self._code()
        self._packages: dict[tuple[str, str], Package] = {}
        # cache folder → where this export staged a copy of it (the later models link to it)
        self._copied: dict[Path, Path] = {}

    def close(self) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()

    # -- the code -------------------------------------------------------------------------------
    def _code(self) -> tuple[Path, str]:
        files: dict[str, Path] = {}
        for package in CODE_PACKAGES:
            source = Path(importlib.import_module(package).__file__ or "").parent
            prefix = Path(*package.split("."))
            found = source.glob("*") if package == "cycada" else source.rglob("*")
            for path in sorted(found):
                if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
                    files[str(prefix / path.relative_to(source))] = path
        digest = hashlib.sha256()
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + files[name].read_bytes())
        code_hash = digest.hexdigest()[:16]

        def fill(staging: Path) -> None:
            for name, path in files.items():
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, staging / name)

        return _fill_once(self.cache / f"code-{code_hash}", fill), code_hash

    # -- the packages ---------------------------------------------------------------------------
    def package(self, name: str, python: str) -> Package:
        """``name`` (at this machine's version, or the newest older one with a wheel for
        ``python``) unpacked in the cache."""
        if (name, python) not in self._packages:
            self._packages[name, python] = self._installed(name, python) or self._downloaded(
                name, python
            )
        return self._packages[name, python]

    def _installed(self, name: str, python: str) -> Package | None:
        """This environment's own copy, when its wheel serves ``python``."""
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            return None
        tags = [
            line.split(":", 1)[1].strip()
            for line in (dist.read_text("WHEEL") or "").splitlines()
            if line.startswith("Tag:")
        ]
        tag = next((t for t in tags if _serves(t, python)), None)
        if tag is None:
            return None
        root = Path(str(dist.locate_file("")))

        def fill(staging: Path) -> None:
            for file in dist.files or []:
                relative = Path(str(file))
                if relative.parts[0] == ".." or "__pycache__" in relative.parts:
                    continue  # console scripts, byte code
                source = root / relative
                if source.is_file():
                    (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, staging / relative)

        folder = _fill_once(self.cache / "packages" / f"{name}-{dist.version}-{tag}", fill)
        return Package(name, dist.version, tag, folder)

    def _downloaded(self, name: str, python: str) -> Package:
        """The wheel for ``python`` from the package index (pip's own settings apply, e.g.
        PIP_INDEX_URL or PIP_FIND_LINKS for a mirror); where the index does not answer, the
        newest copy an earlier export unpacked."""
        try:
            ceiling = f"<={metadata.version(name)}"
        except metadata.PackageNotFoundError:
            ceiling = ""
        arch = platform.machine()
        platforms = [f"manylinux_2_{n}_{arch}" for n in range(CONTAINER_GLIBC, 16, -1)]
        platforms.append(f"manylinux2014_{arch}")
        self.log(f"runtime: fetching {name}{ceiling} for Python {python}")
        with tempfile.TemporaryDirectory() as scratch:
            command = [
                sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                "--disable-pip-version-check", "--only-binary=:all:", "--implementation", "cp",
                "--python-version", python, "--dest", scratch,
                *(argument for p in platforms for argument in ("--platform", p)),
                f"{name}{ceiling}",
            ]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True)
            wheels = sorted(Path(scratch).glob("*.whl"))
            if done.returncode != 0 or not wheels:
                last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
                cached = self._cached(name, python)
                if cached is not None:  # an export without the index (offline, air-gapped)
                    self.log(
                        f"runtime: the package index did not answer ({last}); using the cached "
                        f"{name} {cached.version} for Python {python}"
                    )
                    return cached
                raise ExportError(
                    f"could not fetch {name}{ceiling} for Python {python} ({last}); export with "
                    f"--runtime-python naming only the Python versions your servers run"
                )
            wheel = wheels[0]
            _, version, *rest = wheel.stem.split("-")
            tag = "-".join(rest[-3:])

            def fill(staging: Path) -> None:
                with zipfile.ZipFile(wheel) as archive:
                    for member in archive.infolist():
                        relative = Path(member.filename)
                        if member.is_dir() or relative.is_absolute() or ".." in relative.parts:
                            continue
                        target = staging / relative
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with archive.open(member) as src, open(target, "wb") as dst:
                            shutil.copyfileobj(src, dst)
                        if (member.external_attr >> 16) & 0o111:
                            target.chmod(0o755)

            folder = _fill_once(self.cache / "packages" / f"{name}-{version}-{tag}", fill)
        return Package(name, version, tag, folder)

    def _cached(self, name: str, python: str) -> Package | None:
        """The newest copy of ``name`` for ``python`` an earlier export unpacked in the cache, no
        newer than this machine's version."""
        try:
            ceiling = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            ceiling = None
        found = []
        for folder in (self.cache / "packages").glob(f"{name}-*-*"):
            version, _, tag = folder.name[len(name) + 1 :].partition("-")
            try:
                parsed = Version(version)  # not "gpu" of onnxruntime-gpu's folders
            except InvalidVersion:
                continue
            if _serves(tag, python) and (ceiling is None or parsed <= ceiling):
                found.append((parsed, Package(name, version, tag, folder)))
        return max(found, key=lambda pair: pair[0])[1] if found else None

    def _copy_into_repository(self, source: Path, target: Path) -> None:
        """The files of the cache folder ``source`` under ``target``: hard links to this export's
        staged copy of them when a model before had them, else copies (the module's docstring
        says why never links into the cache)."""
        copied = self._copied.get(source)
        for folder, _, files in os.walk(source):
            for name in files:
                relative = (Path(folder) / name).relative_to(source)
                if copied is not None and (copied / relative).is_file():
                    _copy_or_link(copied / relative, target / relative)
                else:
                    (target / relative).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(Path(folder) / name, target / relative)

    # -- one model ------------------------------------------------------------------------------
    def install(self, model_dir: Path, kind: str, version_dir: Path, staging: Path) -> dict:
        """The runtime of a model of ``kind``: kept when ``model_dir/runtime/<key>`` has it, else
        built in ``staging/runtime/<key>`` (the model's staged folder, published with the
        version); returns what endpoint.json records of it. OpenVINO is carried when the
        version's measured engine choice (in ``version_dir``) is one of its engines."""
        names = [dist[0] for dist in [onnxruntime_distribution()] if dist]
        if kind == "encoded":
            names.append(DECODER)
        if _measured_engine(version_dir).startswith("openvino"):
            names.append("openvino")
        packages = {
            python: [self.package(name, python) for name in names] for python in self.pythons
        }
        described = {
            python: {package.name: package.version for package in chosen}
            for python, chosen in packages.items()
        }
        digest = hashlib.sha256(self.code_hash.encode())
        for python, chosen in sorted(packages.items()):
            for package in chosen:
                digest.update(
                    f"{python} {package.name} {package.version} {package.wheel_tag}".encode()
                )
        key = digest.hexdigest()[:16]
        if not (model_dir / RUNTIME_FOLDER / key).is_dir():
            sources = [(self.code, "code")] + [
                (package.folder, _tag(python))
                for python, chosen in packages.items()
                for package in chosen
            ]
            for source, place in sources:
                self._copy_into_repository(source, staging / RUNTIME_FOLDER / key / place)
                self._copied[source] = staging / RUNTIME_FOLDER / key / place
        return {
            "cycada": cycada.__version__,
            "code": self.code_hash,
            "folder": f"{RUNTIME_FOLDER}/{key}",
            "python": described,
            "stub_needs": "NumPy (<2 for Triton 2.51's stub)",
        }


def _measured_engine(version_dir: Path | None) -> str:
    """The engine the export measured fastest for a version ('' when it measured none)."""
    choice = version_dir / "engine_choice.json" if version_dir else None
    if choice is None or not choice.exists():
        return ""
    return json.loads(choice.read_text()).get("default_engine", "")


MODEL_PY = '''"""Triton Python-backend entry point of a cycada model version.

The model folder carries what it runs (cycada {cycada}): its code and its packages for each
Python version below, under ../{folder}; the stub's own Python needs only NumPy.
"""

import os
import sys

# no __pycache__ beside the carried code: a polling server reloads a model whose folder changes
sys.dont_write_bytecode = True
_RUNTIME = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "{folder}")
_PACKAGES = os.path.join(_RUNTIME, "py%d%d" % sys.version_info[:2])
if not os.path.isdir(_RUNTIME):
    raise ImportError(
        "%s is missing: copy the whole model folder (its runtime/ with its versions)" % _RUNTIME
    )
if not os.path.isdir(_PACKAGES):
    raise ImportError(
        "this model carries packages for Python {pythons}; the backend stub runs Python %d.%d: "
        "export again with cycada export --runtime-python naming it" % sys.version_info[:2]
    )
sys.path[:0] = [os.path.join(_RUNTIME, "code"), _PACKAGES]

from cycada.serving.python_model import {handler} as TritonPythonModel  # noqa: E402, F401
'''


def model_py(handler: str, runtime: dict) -> str:
    """The ``model.py`` of a version whose runtime endpoint.json records as ``runtime``."""
    pythons = ", ".join(runtime["python"]) or "none"
    return MODEL_PY.format(
        handler=handler, folder=runtime["folder"], pythons=pythons, cycada=runtime["cycada"]
    )


def referenced_runtimes(model_dir: Path, versions: Iterable[int]) -> set[str] | None:
    """The runtime folders the given versions name; None when one cannot be read (then
    nothing is removed)."""
    names = set()
    for version in versions:
        try:
            info = json.loads((model_dir / str(version) / "endpoint.json").read_text())
            names.add(Path(info["runtime"]["folder"]).name)
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return names
