"""Run the real ``tritonserver`` on a model repository: start, wait until ready, stop cleanly.

The server runs in its own process group so that stopping it also ends the Python-backend stub
processes, and receives SIGTERM when the process that started it dies (even by SIGKILL), so it
never outlives it holding the ports. It binds to loopback unless told otherwise and appends to a
log file beside the repository (never inside it); when a model fails to load, the server's own
error lines are raised. Readiness is checked against the server's own id, so a different
server already listening on the port is not mistaken for it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cycada.errors import ConfigError, DataError, ServingError
from cycada.grpc_security import AUTH_HEADER, is_loopback
from cycada.serving.server_install import TritonHome, find_tritonserver

PROFILES = ("default", "onnxruntime", "tensorrt", "openvino")
# with a secret, every API but health and metadata needs it; served --insecure (no secret
# given), inference and what clients read before it stay open, the admin APIs locked
RESTRICTED = "inference,shared-memory,model-repository,model-config,statistics,trace,logging"
ADMIN = "shared-memory,model-repository,trace,logging"


# error lines every start prints on a machine without a GPU: never the reason it failed
NO_GPU_NOISE = ("CudaDriverHelper", "Failed to initialize NVML", "DCGM")

_GIVEN_PORTS: set[int] = set()
SHM_DIR = Path("/dev/shm")


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now and not handed out before by this process: the kernel may return the
    same ephemeral port to two binds in a row, and a server given it twice (gRPC and metrics)
    refuses to start."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port
    raise ServingError("no free TCP port found on loopback")


@dataclass
class ServerOptions:
    repository: Path
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    profile: str = "default"
    log_file: Path | None = None
    models: list[str] = field(default_factory=list)  # empty: every model in the repository
    shm_bytes: int = 16 * 1024 * 1024  # Python-backend shared memory per stub (frames are big)
    python_env: Path | None = None  # environment of the backend stub (default: see below)
    extra_args: list[str] = field(default_factory=list)
    cpus: set[int] | None = None  # pin the server and its stubs to these CPUs
    server_id: str = field(default_factory=lambda: f"cycada-{uuid.uuid4().hex[:12]}")
    tls_cert: Path | None = None  # PEM certificate and key: gRPC over TLS
    tls_key: Path | None = None
    auth_secret: str = ""  # required in the cycada-auth header on inference and control calls
    insecure: bool = False  # a non-loopback host without TLS and secret, on purpose
    # HTTP (health probes; inference only with the secret) and Prometheus metrics (no image
    # data): loopback unless a kubelet or Prometheus must reach them
    http_host: str = "127.0.0.1"
    metrics_host: str = "127.0.0.1"
    # seconds between looks at the repository for new versions and changed configs (Triton's
    # poll mode: loaded beside the serving version, which answers until the new one is ready);
    # 0 loads what is there at start only
    poll_seconds: float = 5.0

    @classmethod
    def on_free_ports(cls, repository: Path, **options: Any) -> ServerOptions:
        """Options for a server of ``repository`` on three free loopback ports (gRPC, HTTP,
        metrics): what benchmarks, the demo and the tests start."""
        return cls(
            repository,
            grpc_port=free_port(),
            http_port=free_port(),
            metrics_port=free_port(),
            **options,
        )

    def check(self) -> None:
        """Ports it can listen on; a server reachable from the network is secured, or insecure
        on purpose."""
        ports = {"--grpc-port": self.grpc_port, "--http-port": self.http_port}
        ports["--metrics-port"] = self.metrics_port
        for flag, port in ports.items():
            if not 1 <= port <= 65535:  # tritonserver takes 99999, and listens elsewhere
                raise ConfigError(f"{flag} {port}: expected a port, 1 to 65535")
        if len(set(ports.values())) < len(ports):
            shown = ", ".join(f"{flag} {port}" for flag, port in ports.items())
            raise ConfigError(f"{shown}: expected three different ports")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"TLS file {path} does not exist")
        if self.insecure:
            return
        if not is_loopback(self.host) and not (self.tls_cert and self.auth_secret):
            raise ConfigError(
                f"--host {self.host} is reachable from the network: give --tls-cert, --tls-key "
                "and --auth-secret-file (clients: --ssl --auth-header cycada-auth=SECRET), or "
                "--insecure to serve without them"
            )
        if not is_loopback(self.http_host) and not self.auth_secret:
            raise ConfigError(
                f"--http-host {self.http_host} is reachable from the network, and inference over "
                "HTTP with it: give --auth-secret-file (probes need no secret), or --insecure"
            )

    def exposed(self) -> bool:
        """Whether gRPC or HTTP (both carry inference) is reachable from the network."""
        return not (is_loopback(self.host) and is_loopback(self.http_host))

    def default_log_file(self) -> Path:
        """Beside the repository, one per port: the repository may be read-only or shared."""
        repository = self.repository.resolve()
        return repository.parent / "logs" / f"tritonserver-{repository.name}-{self.grpc_port}.log"


def _reached_at(host: str) -> str:
    """The address this machine reaches a server bound to ``host`` at (any address: loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host


def _environment(home: TritonHome, python_env: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if home.embedded:
        libraries = [str(home.libraries), sysconfig.get_config_var("LIBDIR") or ""]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [p for p in [*libraries, env.get("LD_LIBRARY_PATH", "")] if p]
        )
    # the Python-backend stub imports the packages of the Python first on PATH: the stub's own
    # environment (numpy<2, which its pybind11 build needs) when installed, else this one
    if python_env is not None:
        python_bin = python_env / "bin"
    elif home.stub_env.is_dir():
        python_bin = home.stub_env / "bin"
    else:
        python_bin = Path(sys.executable).parent
    env["PATH"] = os.pathsep.join([str(python_bin), env.get("PATH", "")])
    return env


def polls(options: ServerOptions) -> int:
    """Seconds between Triton's looks at the repository; 0 when it does not poll."""
    if options.models or options.poll_seconds <= 0:
        return 0  # serving named models: explicit model control
    return max(1, round(options.poll_seconds))


def server_command(home: TritonHome, options: ServerOptions) -> list[str]:
    if options.profile not in PROFILES:
        raise ConfigError(f"unknown profile '{options.profile}' (valid: {', '.join(PROFILES)})")
    options.check()
    command = [
        str(home.binary),
        f"--model-repository={options.repository.resolve()}",
        f"--grpc-address={options.host}",
        f"--http-address={options.http_host}",
        f"--metrics-address={options.metrics_host}",
        f"--grpc-port={options.grpc_port}",
        f"--http-port={options.http_port}",
        f"--metrics-port={options.metrics_port}",
        f"--id={options.server_id}",
        "--exit-on-error=true",
        # polling: a new version that fails to load must not make the server unready (and a
        # kubelet take it out of service) while its serving versions answer; per model,
        # /v2/models/NAME/ready says more
        f"--strict-readiness={'false' if polls(options) else 'true'}",
        f"--backend-config=python,shm-default-byte-size={options.shm_bytes}",
        f"--backend-config=python,shm-growth-byte-size={options.shm_bytes}",
        f"--backend-config=python,shm-region-prefix-name={shm_region_prefix(options)}",
    ]
    if home.embedded:
        command.append(f"--backend-directory={home.backends}")
    if options.profile != "default":
        command.append(f"--model-config-name={options.profile}")
    if options.models:
        command.append("--model-control-mode=explicit")
        command += [f"--load-model={name}" for name in options.models]
    elif polls(options):
        command += ["--model-control-mode=poll", f"--repository-poll-secs={polls(options)}"]
    if options.tls_cert:
        command += [
            "--grpc-use-ssl=true",
            f"--grpc-server-cert={Path(options.tls_cert).resolve()}",
            f"--grpc-server-key={Path(options.tls_key).resolve()}",
        ]
    restricted = RESTRICTED
    secret = options.auth_secret
    if not secret and options.exposed():
        # --insecure: inference stays open, but loading models and registering shared memory
        # need a secret nobody was given
        restricted, secret = ADMIN, uuid.uuid4().hex
    if secret:
        command += [
            f"--grpc-restricted-protocol={restricted}:{AUTH_HEADER}={secret}",
            f"--http-restricted-api={restricted}:{AUTH_HEADER}={secret}",
        ]
    return command + options.extra_args


def shm_region_prefix(options: ServerOptions) -> str:
    """How the names of this server's Python-backend regions in /dev/shm begin: its own, so
    that what a killed server left there can be told from a live server's."""
    return f"{options.server_id}_"


def remove_shared_memory(prefix: str) -> None:
    """Remove the /dev/shm regions whose names begin with ``prefix``. A server that dies
    without its own shutdown (kill -9, a hang, out of memory) leaves them there, and /dev/shm
    is memory: ``shm_bytes`` per stub at every such death."""
    with contextlib.suppress(OSError):  # no /dev/shm (not Linux): nothing was left there
        for entry in SHM_DIR.iterdir():
            if entry.name.startswith(prefix):
                entry.unlink(missing_ok=True)


def parse_cpus(text: str, option: str = "--cpus") -> set[int]:
    """``"0,2-3"`` → {0, 2, 3}; every CPU must be one this process may run on."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected CPU numbers like 0,2-3") from None
    allowed = os.sched_getaffinity(0)
    if not cpus or not cpus <= allowed:
        raise ConfigError(
            f"{option} {text!r}: expected CPUs among {sorted(allowed)} (this machine's)"
        )
    return cpus


def launcher(cpus: set[int] | None) -> tuple[list[str], Callable[[], None] | None]:
    """How the server process starts: the words before its command, and a preexec function.

    It gets SIGTERM when the process that started it dies (Linux PR_SET_PDEATHSIG), so it
    never outlives it holding the ports, and runs pinned to ``cpus`` (inherited by the stubs
    it starts). util-linux's setpriv and taskset set both and exec the server, so Popen starts
    it with vfork; a preexec function needs a fork of this process (gRPC, ONNX Runtime and
    PyTorch threads) that runs Python before exec, which the subprocess documentation calls
    unsafe. Without those tools, the preexec function it is.
    """
    setpriv, taskset = shutil.which("setpriv"), shutil.which("taskset")
    if setpriv and (taskset or not cpus):
        words = [setpriv, "--pdeathsig", "TERM"]
        if cpus:
            words += [taskset, "--cpu-list", ",".join(map(str, sorted(cpus)))]
        return words, None

    def setup() -> None:
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if cpus:
            os.sched_setaffinity(0, cpus)

    return [], setup


def _check_carries_its_runtime(model: Path) -> None:
    """A Python-backend version must carry its code and packages (export.runtime): one written
    by a cycada before that imports cycada from the server's Python, which has only NumPy."""
    for version in sorted(p for p in model.iterdir() if p.is_dir() and p.name.isdigit()):
        entry = version / "model.py"
        try:
            text = entry.read_text() if entry.exists() else ""
        except OSError as exc:
            raise DataError(f"{entry} cannot be read by the server: {exc.strerror}") from None
        if text and "_RUNTIME" not in text:
            raise DataError(
                f"model '{model.name}' version {version.name} was exported by an older cycada "
                "and needs cycada beside the server; export the run again (a version now "
                "carries its code and packages)"
            )


class TritonServer:
    """A running server; use as a context manager or call :meth:`start` and :meth:`stop`."""

    def __init__(self, options: ServerOptions, home: TritonHome | None = None):
        self.options = options
        self.home = home or find_tritonserver()
        if self.home is None:
            raise ServingError(
                "tritonserver is not installed: run `python -m cycada.serving.server_install` "
                "(or `make setup`), or use NVIDIA's Triton container"
            )
        options.check()
        repository = options.repository
        if not repository.is_dir() or not any(repository.glob("*/config.pbtxt")):
            raise DataError(
                f"{repository} is not a model repository (no <model>/config.pbtxt); "
                "create one with `cycada export RUN_DIR --repository DIR`"
            )
        for config in sorted(repository.glob("*/config.pbtxt")):
            model = config.parent
            if options.models and model.name not in options.models:
                continue
            if not any(p.is_dir() and p.name.isdigit() for p in model.iterdir()):
                raise DataError(
                    f"model '{model.name}' in {repository} has no version folder; "
                    "export a run into it first: cycada export RUN_DIR --repository "
                    f"{repository}"
                )
            _check_carries_its_runtime(model)
        self.log_file = options.log_file or options.default_log_file()
        self.process: subprocess.Popen | None = None
        self._log_offset = 0  # where this start's lines begin in the (appended) log

    @property
    def grpc_url(self) -> str:
        return f"{self.options.host}:{self.options.grpc_port}"

    @property
    def http_url(self) -> str:
        """Where this machine reaches the HTTP endpoint (health, readiness)."""
        return f"http://{_reached_at(self.options.http_host)}:{self.options.http_port}"

    @property
    def metrics_url(self) -> str:
        """Where this machine reaches the Prometheus metrics."""
        return (
            f"http://{_reached_at(self.options.metrics_host)}:{self.options.metrics_port}/metrics"
        )

    def start(self, timeout: float = 120.0) -> TritonServer:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:  # appended: earlier runs' errors stay readable
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"--- cycada: tritonserver {self.options.server_id} at {stamp}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            words, preexec = launcher(self.options.cpus)
            self.process = subprocess.Popen(
                [*words, *server_command(self.home, self.options)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_environment(self.home, self.options.python_env),
                start_new_session=True,  # its own group: stopping it ends the stubs too
                preexec_fn=preexec,
            )
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        """GET ``path`` of the HTTP endpoint, or a full URL; (0, b"") when nothing answers."""
        request = urllib.request.Request(path if "://" in path else self.http_url + path)
        if self.options.auth_secret:
            request.add_header(AUTH_HEADER, self.options.auth_secret)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError):
            return 0, b""

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServingError(
                    f"tritonserver exited with code {self.process.returncode}: "
                    f"{self.errors() or 'see ' + str(self.log_file)}"
                )
            if self._get("/v2/health/ready")[0] == 200:
                status, body = self._get("/v2")
                if status != 200 or json.loads(body).get("name") != self.options.server_id:
                    raise ServingError(
                        f"another server answers on {self.http_url}, not the tritonserver "
                        "started here: choose other ports (--grpc-port, --http-port, "
                        "--metrics-port)"
                    )
                # Triton opens its metrics port after HTTP: ready means a monitor reads it too
                if not self._serves_metrics() or self._get(self.metrics_url)[0] == 200:
                    return
            time.sleep(0.2)
        raise ServingError(
            f"tritonserver was not ready within {timeout:.0f} s: "
            f"{self.errors() or 'see ' + str(self.log_file)}"
        )

    def _serves_metrics(self) -> bool:
        """Whether Triton opens its metrics port (extra arguments may turn it off)."""
        return "--allow-metrics=false" not in self.options.extra_args

    def errors(self) -> str:
        """The server's own error lines since its last start (failed loads, tracebacks)."""
        try:
            with open(self.log_file, "rb") as log:
                log.seek(self._log_offset)
                lines = log.read().decode(errors="replace").splitlines()
        except OSError:
            return ""
        picked = [
            line.strip()
            for line in lines
            if (line.startswith("E") or "failed to load" in line or "Error" in line)
            and not any(noise in line for noise in NO_GPU_NOISE)
        ]
        return " | ".join(dict.fromkeys(picked))[-2000:]

    def models(self) -> list[dict]:
        status, body = self._get("/v2/repository/index")
        return [] if status != 200 else json.loads(body or b"[]")

    def live(self) -> bool:
        """Whether the server answers its liveness endpoint within 2 s."""
        return self._get("/v2/health/live")[0] == 200

    def memory_mb(self) -> float:
        """Resident memory of the server and its backend stubs (its process group), in MB."""
        if self.process is None:
            return 0.0
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == self.process.pid:  # process group id
                    total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")  # rss pages
            except (OSError, IndexError, ValueError):
                continue
        return round(total / 1e6, 1)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the server's process group (server and stubs), SIGKILL if it lingers."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # stray stubs, if any
        process.wait()
        self.process = None
        remove_shared_memory(shm_region_prefix(self.options))  # the group is gone: theirs
        return process.returncode

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
