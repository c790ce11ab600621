"""Server options that need no running server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cycada.errors import ConfigError, ServingError
from cycada.serving.server import launcher, parse_cpus

# a parent that starts `sleep` as the server is started, prints its pid and waits to be killed
LAUNCHING_PARENT = """
import shutil, subprocess, sys, time
from cycada.serving.server import launcher
if sys.argv[2] == "without-tools":
    shutil.which = lambda name: None
words, preexec = launcher({int(sys.argv[1])})
child = subprocess.Popen([*words, "sleep", "120"], start_new_session=True, preexec_fn=preexec)
print(child.pid, flush=True)
time.sleep(120)
"""


def test_parse_cpus_takes_lists_and_ranges_of_this_machines_cpus():
    allowed = os.sched_getaffinity(0)
    first = min(allowed)
    assert parse_cpus(str(first)) == {first}
    assert parse_cpus(f"{first}-{first}") == {first}
    assert parse_cpus(",".join(map(str, sorted(allowed)))) == allowed


@pytest.mark.parametrize("tools", ["with-tools", "without-tools"])
def test_the_server_process_is_pinned_and_ends_with_the_process_that_started_it(tools):
    """Both ways a server starts (util-linux's setpriv and taskset, exec'd in place, so no
    Python runs in a fork of a threaded process; a preexec function where they are missing):
    it runs on the given CPUs, and kill -9 of its parent ends it (SIGTERM from the kernel)."""
    cpu = max(os.sched_getaffinity(0))
    if tools == "with-tools":
        words, preexec = launcher({cpu})
        assert preexec is None and Path(words[0]).name == "setpriv", "util-linux is missing"
    parent = subprocess.Popen(
        [sys.executable, "-c", LAUNCHING_PARENT, str(cpu), tools], stdout=subprocess.PIPE
    )
    try:
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 10
        while not Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"sleep\0"):
            assert time.monotonic() < deadline, "the launcher did not exec the command in place"
            time.sleep(0.01)
        assert os.sched_getaffinity(child) == {cpu}
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists(), "the server outlived the process that started it"


@pytest.mark.parametrize("text", ["x", "1-a", "", "100000"])
def test_parse_cpus_names_the_bad_value(text):
    with pytest.raises(ConfigError, match="--cpus"):
        parse_cpus(text)


@pytest.mark.parametrize(
    "name",
    [
        "pytriton/tritonserver/../../../escaped.txt",
        "pytriton/tritonserver//etc/escaped.txt",
        "nvidia_pytriton.libs/../../escaped.so",
    ],
)
def test_wheel_members_outside_the_install_folder_are_refused(tmp_path, name):
    """Zip slip: a crafted wheel must not write anywhere but the install folder."""
    import zipfile

    from cycada.serving.server_install import _unpack_server

    wheel = tmp_path / "nvidia_pytriton-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("pytriton/tritonserver/bin/tritonserver", "#!/bin/sh\n")
        archive.writestr(name, "escaped")
    home = tmp_path / "deep" / "er" / "opt" / "tritonserver"
    with pytest.raises(ServingError, match="would be written outside"):
        _unpack_server(home, wheel)
    assert not list(tmp_path.rglob("escaped*")) and not home.exists()
    assert not list(home.parent.glob(".tritonserver.*"))  # the staging folder is gone too


def test_a_version_exported_before_models_carried_their_runtime_is_refused_with_the_fix(tmp_path):
    """It would import cycada from the server's Python, which has only NumPy (NVIDIA's
    container, the embedded server's stub): one line saying to export again, not a load error."""
    from cycada.errors import DataError
    from cycada.serving.server import ServerOptions, TritonServer
    from cycada.serving.server_install import TritonHome

    version = tmp_path / "repo" / "segment" / "1"
    version.mkdir(parents=True)
    (version.parent / "config.pbtxt").write_text('name: "segment"\nbackend: "python"\n')
    (version / "model.py").write_text(
        "from cycada.serving.python_model import ImageModel as TritonPythonModel\n"
    )
    home = TritonHome(tmp_path / "triton", embedded=True)
    with pytest.raises(DataError, match="version 1 was exported by an older cycada"):
        TritonServer(ServerOptions(tmp_path / "repo"), home=home)


def test_http_off_loopback_needs_the_secret_or_insecure(tmp_path):
    from cycada.errors import ConfigError
    from cycada.serving.server import ServerOptions

    with pytest.raises(ConfigError, match="--http-host 0.0.0.0 is reachable"):
        ServerOptions(tmp_path, http_host="0.0.0.0").check()
    ServerOptions(tmp_path, http_host="0.0.0.0", auth_secret="s").check()
    ServerOptions(tmp_path, http_host="0.0.0.0", insecure=True).check()
    ServerOptions(tmp_path, metrics_host="0.0.0.0").check()  # metrics carry no image data


@pytest.mark.parametrize(
    "options,message",
    [
        (["--http-port", "99999"], "--http-port 99999: expected a port, 1 to 65535"),
        (["--grpc-port", "0"], "--grpc-port 0: expected a port, 1 to 65535"),
        (["--http-port", "8001"], "--http-port 8001, --metrics-port 8002: expected three diff"),
        (["--max-restarts", "-1"], "--max-restarts -1: expected 0 or more"),
        (["--restart-pause", "-1"], "--restart-pause -1: expected seconds, 0 or more"),
        (["--poll", "-1"], "--poll -1: expected seconds, 0 or more"),
    ],
)
def test_serve_refuses_options_it_cannot_serve_with_in_one_line(tmp_path, options, message):
    """Before any server starts (tritonserver listened elsewhere than the 99999 it was given,
    and `cycada serve` printed that port)."""
    from tests.helpers import cycada, one_line_error

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m"\n')
    done = cycada("serve", "--repository", str(tmp_path), *options, timeout=60)
    one_line_error(done, message)
    assert "starting tritonserver" not in done.stdout
