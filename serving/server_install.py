"""Install the real ``tritonserver`` (from the nvidia-pytriton wheel) beside the environment.

The wheel carries Triton 2.51 with the Python backend, but as a Python package it pins
``numpy<2`` and pulls in a dozen libraries this project never imports. So it is not pip-installed:
the wheel is downloaded once (``pip download --no-deps``) and only the server, its backends and
its bundled shared libraries are unpacked into ``<sys.prefix>/opt/tritonserver``. The Python
backend stub matching the running interpreter is copied into ``backends/python``.

    python -m cycada.serving.server_install      # idempotent; prints the binary's path
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import venv
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cycada.errors import ServingError

PYTRITON_WHEEL = "nvidia-pytriton==0.7.0"
DEFAULT_HOME = Path(sys.prefix) / "opt" / "tritonserver"
CONTAINER_HOME = Path("/opt/tritonserver")  # NVIDIA's Triton container


@dataclass(frozen=True)
class TritonHome:
    """Where a server lives: its binary, backends and (for the wheel build) bundled libraries."""

    root: Path
    embedded: bool  # True for the unpacked wheel (Python backend only)

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        return self.root / "backends"

    @property
    def libraries(self) -> Path:
        return self.root / "lib"

    @property
    def stub_env(self) -> Path:
        return self.root / "python-env"


def find_tritonserver() -> TritonHome | None:
    """$CYCADA_TRITONSERVER_HOME, then this environment's install, then NVIDIA's container."""
    override = os.environ.get("CYCADA_TRITONSERVER_HOME")
    candidates = [(Path(override), True)] if override else []
    candidates += [(DEFAULT_HOME, True), (CONTAINER_HOME, False)]
    for root, embedded in candidates:
        home = TritonHome(root, embedded and (root / "lib").is_dir())
        if home.binary.is_file():
            return home
    return None


def _stub_for_running_python(root: Path) -> None:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServingError(
            f"the Triton wheel has no Python backend stub for Python {version} "
            f"(it ships 3.8-3.13); looked for {stub}"
        )
    target = root / "backends" / "python" / "triton_python_backend_stub"
    shutil.copy2(stub, target)
    target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


# What NVIDIA's Triton container gives the Python-backend stub: NumPy and nothing else. The
# models carry the rest (cycada.export.runtime), so serving here proves they serve there.
STUB_REQUIREMENTS = ["numpy<2"]
STUB_MARKER = ".cycada-stub"


def install_stub_env(home: TritonHome) -> Path:
    """A venv for the Python-backend stub with NumPy <2 only (the stub's pybind11 build
    misreads NumPy 2 arrays: outputs arrive empty), as in NVIDIA's container."""
    env = home.stub_env
    marker = env / STUB_MARKER
    wanted = " ".join(STUB_REQUIREMENTS) + "\n"
    if marker.is_file() and marker.read_text() == wanted:
        return env

    shutil.rmtree(env, ignore_errors=True)
    venv.create(env, with_pip=True, clear=True)
    pip = [str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    done = subprocess.run([*pip, *STUB_REQUIREMENTS], capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise ServingError(f"could not set up the Python-backend environment {env}: {last}")
    marker.write_text(wanted)
    return env


def install_tritonserver(
    home: Path = DEFAULT_HOME, wheel: Path | None = None, stub_env: bool = True
) -> TritonHome:
    """Unpack the server from the nvidia-pytriton wheel into ``home`` and set up its stub's
    Python environment (each step a no-op when already done)."""
    found = TritonHome(home, True)
    if not (
        found.binary.is_file() and (home / "backends/python/triton_python_backend_stub").is_file()
    ):
        _unpack_server(home, wheel)
    if stub_env:
        install_stub_env(found)
    return found


def _inside(staging: Path, relative: str, member: zipfile.ZipInfo, wheel: Path) -> Path:
    """Where a wheel member goes: refused if it would land outside the install folder (an
    absolute name or '..' parts: "zip slip") or is a symbolic link."""
    target = (staging / relative).resolve()
    if (
        relative.startswith("/")
        or ".." in Path(relative).parts
        or not target.is_relative_to(staging.resolve())
    ):
        raise ServingError(f"{wheel}: member {member.filename} would be written outside {staging}")
    if (member.external_attr >> 16) & 0o170000 == 0o120000:
        raise ServingError(f"{wheel}: member {member.filename} is a symbolic link")
    return target


def _unpack_server(home: Path, wheel: Path | None) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        if wheel is None:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", scratch]
            done = subprocess.run([*command, PYTRITON_WHEEL], capture_output=True, text=True)
            wheels = sorted(Path(scratch).glob("nvidia_pytriton-*.whl"))
            if done.returncode != 0 or not wheels:
                last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
                raise ServingError(f"could not download {PYTRITON_WHEEL}: {last}")
            wheel = wheels[0]
        home.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tritonserver.", dir=home.parent))
        try:
            with zipfile.ZipFile(wheel) as archive:
                for member in archive.infolist():
                    name = member.filename
                    if name.startswith("pytriton/tritonserver/") and not name.endswith("/"):
                        relative = name[len("pytriton/tritonserver/") :]
                    elif name.startswith("nvidia_pytriton.libs/") and not name.endswith("/"):
                        relative = "lib/" + name[len("nvidia_pytriton.libs/") :]
                    else:
                        continue
                    target = _inside(staging, relative, member, wheel)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    mode = (member.external_attr >> 16) & 0o777
                    target.chmod(mode or 0o644)
            (staging / "bin" / "tritonserver").chmod(0o755)
            _stub_for_running_python(staging)
            shutil.rmtree(home, ignore_errors=True)
            os.replace(staging, home)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:

    parser = argparse.ArgumentParser(description="Install tritonserver from the pytriton wheel.")
    parser.add_argument("--wheel", type=Path, help="a downloaded nvidia_pytriton wheel (offline)")
    parser.add_argument(
        "--no-stub-env",
        action="store_true",
        help="let the backend stub use this environment (PyTorch engine via DLPack; numpy 2 ok)",
    )
    args = parser.parse_args(argv)
    try:
        home = install_tritonserver(wheel=args.wheel, stub_env=not args.no_stub_env)
    except ServingError as exc:
        print(f"cycada: error: {exc}", file=sys.stderr)
        return 2
    print(home.binary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
