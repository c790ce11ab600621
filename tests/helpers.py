"""What several test modules share: where the real data lives, the tiny configs of the
end-to-end runs, and small writers of test data. Test modules import from here, never from
one another."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("CYCADA_DATA", REPO.parent / "shared" / "data")).resolve()


def data_path(*parts: str) -> Path:
    """A path under the real data folder; skips the test (with the reason) when it is absent."""
    path = DATA_ROOT.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data {path} is absent (set CYCADA_DATA to the shared data folder)")
    return path


def write_tiny_domains(root: Path, count: int = 6, width: int = 128, height: int = 64) -> Path:
    """A game-style labelled source (GTA5 layout) and a camera-style target (Cityscapes layout:
    unlabelled train, labelled val) under ``root``: the data of the tiny end-to-end runs."""
    from cycada.training.segmentation.scene_writer import write_scene_dataset

    write_scene_dataset(root / "gta5", count, "game", "gta5", width, height)
    write_scene_dataset(
        root / "cityscapes", count, "camera", "cityscapes", width, height, labels=False
    )
    write_scene_dataset(
        root / "cityscapes", 3, "camera", "cityscapes", width, height, split="val", seed=1
    )
    return root


def skip_without_tritonserver() -> None:
    """Skip the calling test module (with the reason) when tritonserver is not installed."""
    from cycada.serving.server_install import find_tritonserver

    if find_tritonserver() is None:
        pytest.skip(
            "tritonserver is not installed (run `python -m cycada.serving.server_install`)",
            allow_module_level=True,
        )


# a whole segmentation run in seconds (with write_tiny_domains or the scenes fixture)
TINY_SEG = [
    "model=fastscnn",
    "data.resize_width=128",
    "data.workers=0",
    "source.iterations=6",
    "source.batch_size=2",
    "source.crop=64",
    "pixel.max_steps=3",
    "pixel.crop=32",
    "pixel.generator_width=8",
    "pixel.discriminator_width=8",
    "pixel.sample_every=2",
    "target.iterations=4",
    "target.batch_size=2",
    "target.crop=64",
    "feature.iterations=6",
    "feature.crop=64",
    "feature.gate_window=2",
    "feature.gate_threshold=0.0",
    "eval_panels=2",
]

# a whole digits run in seconds (synthetic digits as the source)
TINY_DIGITS = [
    "data.synthetic_size=120",
    "data.max_samples=96",
    "source.epochs=2",
    "source.batch_size=32",
    "pixel.max_steps=4",
    "pixel.batch_size=16",
    "pixel.generator_width=8",
    "pixel.discriminator_width=8",
    "pixel.sample_every=2",
    "target.epochs=1",
    "target.batch_size=32",
    "feature.max_epochs=2",
    "feature.batch_size=32",
    "feature.gate_threshold=0.0",
    "eval_batch_size=50",
]


def grey_digit_folder(root: Path) -> str:
    """A user-brought labelled target domain: grey, inverted synthetic digits in class folders
    under ``root``; its domain name (``folder:ROOT``)."""
    import cv2

    from cycada.training.digits.synthetic import render_synthetic_digits

    images, labels = render_synthetic_digits(80, seed=99)
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = root / str(label)
        folder.mkdir(exist_ok=True)
        grey = 255 - cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        cv2.imwrite(str(folder / f"{index:03d}.png"), grey)
    return f"folder:{root}"


def tiny_digits_config(target: str, *extra: str, **overrides):
    """The tiny digits config: synthetic digits → ``target``, evaluated on its train split."""
    from cycada.training.digits.config import resolve_digits_config

    data = {"source": "synth", "target": target, "eval_split": "train"}
    return resolve_digits_config(
        "quick", sets=[*TINY_DIGITS, *extra], overrides={"data": data, **overrides}
    )


def served_copy(exported: Path, folder: Path, polled: bool = False) -> Path:
    """A module's own copy of the session's shared repository (the ``exported_repository``
    fixture): tests add versions to it and kill servers on it. The models' runtimes (code and
    packages, hundreds of MB, never changed in place) are hard links to the shared copy's, or
    with ``polled`` (for a polling server: a link made by any other test would change a file
    under its models and reload them) copies, linked among this copy's models as an export
    does."""
    import shutil

    first_copy: dict[tuple[int, int], str] = {}  # (device, inode) of a shared file → its copy

    def link_runtime(source: str, target: str) -> None:
        if "/runtime/" in source:
            stat = os.stat(source)
            identity = (stat.st_dev, stat.st_ino)
            linked = first_copy.get(identity) if polled else source
            if linked is not None:
                with contextlib.suppress(OSError):
                    os.link(linked, target)
                    return
            first_copy.setdefault(identity, target)
        shutil.copy2(source, target)

    return Path(shutil.copytree(exported, folder / "repository", copy_function=link_runtime))


def cycada(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """``cycada ARGS`` in a child process, as a user runs it (output captured as text)."""
    return subprocess.run(
        [sys.executable, "-m", "cycada.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    """``done`` (a cycada command) refused its input as a user should see it: exit 2, one
    ``cycada: error:`` line holding every fragment, no traceback."""
    assert done.returncode == 2, (done.stdout[-500:], done.stderr[-1500:])
    assert "Traceback" not in done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("cycada: error:")]
    assert len(error) == 1, done.stderr[-1500:]
    for fragment in fragments:
        assert fragment in error[0], error[0]


def frame_count(path: Path) -> int:
    """Frames OpenCV decodes from the video at ``path`` (0 when it cannot open it)."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    return count


def jpeg_with_orientation(jpeg, orientation: int):
    """The JPEG with an EXIF block (big-endian TIFF, one IFD entry: Orientation)."""
    import numpy as np

    tiff = b"MM\x00*\x00\x00\x00\x08" + (1).to_bytes(2, "big")
    tiff += (0x0112).to_bytes(2, "big") + (3).to_bytes(2, "big") + (1).to_bytes(4, "big")
    tiff += orientation.to_bytes(2, "big") + b"\x00\x00" + b"\x00\x00\x00\x00"
    app1 = b"Exif\x00\x00" + tiff
    segment = b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1
    data = jpeg.tobytes()
    return np.frombuffer(data[:2] + segment + data[2:], np.uint8)


NEWER_PIXEL_OPTIONS = ("semantic_model", "semantic_gate_loss", "forward_gan_weight")


def as_an_older_cycada_wrote_it(path, change=None) -> None:
    """Rewrite a checkpoint's header as a cycada without the newest pixel options wrote it: its
    config lacks them and its fingerprint is another one (its version's hash)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    config, meta = json.loads(metadata["config"]), json.loads(metadata["meta"])
    for key in NEWER_PIXEL_OPTIONS:
        del config["pixel"][key]
    config["pixel"].update(change or {})
    meta["fingerprint"] = "0123456789abcdef"
    metadata.update(config=json.dumps(config), meta=json.dumps(meta))
    save_file(load_file(str(path)), str(path), metadata=metadata)


def serve_process(repository, *extra):
    """`cycada serve` of the segment model on free ports; returns (process, gRPC port) once
    it prints 'serving:'."""
    from cycada.serving.server import free_port

    grpc_port = free_port()
    command = [
        sys.executable, "-m", "cycada.cli", "serve", "--repository", str(repository),
        "--grpc-port", str(grpc_port), "--http-port", str(free_port()),
        "--metrics-port", str(free_port()), "--model", "segment", *extra,
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("serving:") or not line:
            break
    return process, grpc_port


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def shm_regions_of(server_pid: int) -> set[str]:
    """The names of the /dev/shm regions of the tritonserver ``server_pid`` (its Python
    backend's, named with the prefix on its command line)."""
    arguments = Path(f"/proc/{server_pid}/cmdline").read_text().split("\0")
    option = "--backend-config=python,shm-region-prefix-name="
    (prefix,) = [arg.removeprefix(option) for arg in arguments if arg.startswith(option)]
    return {entry.name for entry in Path("/dev/shm").iterdir() if entry.name.startswith(prefix)}


def tritonserver_of(serve_pid: int, timeout: float = 60.0) -> int:
    """The tritonserver that `cycada serve` runs now (waits through a restart)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in children_of(serve_pid):
            with contextlib.suppress(OSError):
                if "tritonserver" in Path(f"/proc/{pid}/cmdline").read_text():
                    return pid
        time.sleep(0.05)
    raise AssertionError("cycada serve runs no tritonserver")


@dataclass(frozen=True)
class StubEnvironment:
    """What a tritonserver started by hand needs for its Python backend: the backends folder
    (with the stub of the Python below), PATH (that Python's environment first) and
    LD_LIBRARY_PATH (the server's libraries and that Python's libpython)."""

    backends: Path
    path: str
    libraries: str

    @classmethod
    def embedded(cls) -> StubEnvironment:
        """The embedded server's own: its NumPy-only stub environment, this Python."""
        import sysconfig

        from cycada.serving.server_install import find_tritonserver

        home = find_tritonserver()
        path = f"{home.stub_env / 'bin'}:/usr/bin:/bin"
        return cls(home.backends, path, f"{home.libraries}:{sysconfig.get_config_var('LIBDIR')}")


class DirectServer:
    """tritonserver started by hand (no cycada), as a container's entry point starts it, with
    ``extra`` arguments (and ``launch`` before the binary: a manifest's shell that execs it);
    ready (HTTP /v2/health/ready) when constructed."""

    def __init__(self, repository: Path, stub: StubEnvironment, *extra: str, ports=None, launch=()):
        import urllib.request

        from cycada.serving.server import free_port
        from cycada.serving.server_install import find_tritonserver

        self.http, self.grpc, self.metrics = ports or (free_port(), free_port(), free_port())
        command = [
            *launch,
            str(find_tritonserver().binary),
            f"--model-repository={repository}",
            f"--backend-directory={stub.backends}",
            f"--http-port={self.http}",
            f"--grpc-port={self.grpc}",
            f"--metrics-port={self.metrics}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
            *extra,
        ]
        self.log = repository.parent / f"direct-{self.grpc}.log"
        env = {"PATH": stub.path, "LD_LIBRARY_PATH": stub.libraries, "HOME": str(repository.parent)}
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=repository.parent,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                url = f"http://127.0.0.1:{self.http}/v2/health/ready"
                if urllib.request.urlopen(url, timeout=2).status == 200:
                    return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise AssertionError("not ready in 180 s: " + self.log.read_text()[-3000:])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):  # what it started and left (none, if well)
            os.killpg(self.process.pid, signal.SIGKILL)


_spawned_pool = None


def in_spawned_child(function, *args):
    """``function(*args)`` in a spawned process, one per test process, started at the first
    call and kept (a spawn costs about 2 CPU-seconds of imports; a suite makes dozens of such
    calls). For OpenVINO: a process that ran it crashed when it later forked (DataLoader
    workers of a training test in the same pytest worker), so tests run it where the product
    does, away from the test process."""
    import atexit
    import concurrent.futures
    import multiprocessing

    global _spawned_pool
    if _spawned_pool is None:
        context = multiprocessing.get_context("spawn")
        _spawned_pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=context)
        atexit.register(_spawned_pool.shutdown)
    try:
        return _spawned_pool.submit(function, *args).result()
    except concurrent.futures.process.BrokenProcessPool:
        _spawned_pool = None  # the child died: the next call starts another
        raise


def served_engine_outputs(version_dir: Path, array, parameters: dict | None = None) -> dict:
    """(In a child, see :func:`in_spawned_child`.) The outputs of the engine the server runs for
    a version (the export's measured choice), with the threads of one served instance."""
    from cycada.serving.engines import select_engine

    parameters = {"intra_op_threads": "1", **(parameters or {})}
    engine = select_engine(version_dir, parameters, "CPU", 0)
    outputs = engine.run(array, engine.outputs)
    return {"engine": type(engine).__name__, **dict(zip(engine.outputs, outputs))}


def openvino_signature(path: Path) -> tuple[list, list]:
    """(In a child.) ([(name, element type)] of the inputs, the same of the outputs) of an
    OpenVINO model file."""
    import openvino

    model = openvino.Core().read_model(str(path))
    return tuple(
        [(t.get_any_name(), t.get_element_type().get_type_name()) for t in tensors]
        for tensors in (model.inputs, model.outputs)
    )


class _Parsed(Exception):
    """Raised in place of running a command once its arguments have parsed."""


def parse_failure(argv: list[str]) -> str | None:
    """Parse ``cycada ARGV`` as the command does, without running it: None when it parses,
    else argparse's reason (its last line on stderr)."""
    import argparse
    import contextlib
    import io
    from unittest import mock

    from cycada.cli import main

    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        parse_args(self, args, namespace)
        raise _Parsed

    errors = io.StringIO()
    with (
        mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop),
        contextlib.redirect_stderr(errors),
    ):
        try:
            main(argv)
        except _Parsed:
            return None
        except SystemExit:
            return (errors.getvalue().strip().splitlines() or ["no message"])[-1]
    return "the command ran instead of stopping after its parse"
