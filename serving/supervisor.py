"""Keep a tritonserver running: restart it on the same ports when it dies or hangs, within limits.

``cycada serve`` runs the server under :func:`supervise`. A server that exits by itself (a
crash, ``kill -9``, out of memory), or that stops answering its liveness endpoint while its
process lives on (a hang: ``hang_seconds`` of failed probes), is restarted after a pause that
doubles with each quick failure (1 s, 2 s, 4 s ... up to 30 s; back to 1 s after a minute of
good running), at most ``max_per_minute`` times in any minute. A restart that fails (its port
held by another process for a while, a model that does not load) counts as one more death and
is tried again within the same budget. Each restart is logged with the server's last error
lines. Clients that wait out a restart (``--retry-window``) resend what was in flight.
"""

from __future__ import annotations

import collections
import contextlib
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from cycada.errors import ServingError
from cycada.serving.server import TritonServer

STABLE_SECONDS = 60.0  # a server that ran this long resets the backoff
PROBE_SECONDS = 1.0  # between liveness probes of a running server


@dataclass(frozen=True)
class RestartPolicy:
    enabled: bool = True
    max_per_minute: int = 5
    first_pause: float = 1.0
    max_pause: float = 30.0
    hang_seconds: float = 30.0  # liveness failing this long with the process alive: a hang


def wait_for_failure(server: TritonServer, hang_seconds: float) -> str:
    """Block while the server runs and answers; return why it stopped: its exit code, or a
    hang (the process alive, ``/v2/health/live`` unanswered for ``hang_seconds``), after
    which the process is killed."""
    silent_since = None
    while True:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return f"exited with code {server.process.wait(timeout=PROBE_SECONDS)}"
        if server.live():
            silent_since = None
            continue
        now = time.monotonic()
        silent_since = now if silent_since is None else silent_since
        if now - silent_since >= hang_seconds:
            server.stop(timeout=0)  # a hung process may not heed SIGTERM: SIGKILL at once
            return f"hung (alive, not answering /v2/health/live for {hang_seconds:g} s)"


def supervise(
    server: TritonServer,
    policy: RestartPolicy,
    ready_timeout: float,
    log: Callable[[str], None],
) -> None:
    """Block while the (started) server runs; restart it when it dies or hangs. Returns never:
    raises ServingError when restarts are off or over the limit, KeyboardInterrupt on Ctrl-C."""
    restarts: collections.deque[float] = collections.deque()
    pause = policy.first_pause
    running_since = time.monotonic()
    failed_start = ""  # why the last restart did not come up
    while True:
        if failed_start:
            why, errors = "did not come back", failed_start
        else:
            why = wait_for_failure(server, policy.hang_seconds)
            errors = server.errors() or f"no error lines; see {server.log_file}"
        if not policy.enabled:
            raise ServingError(f"tritonserver {why}: {errors}")
        now = time.monotonic()
        while restarts and now - restarts[0] > 60.0:
            restarts.popleft()
        if len(restarts) >= policy.max_per_minute:
            raise ServingError(
                f"tritonserver failed {len(restarts) + 1} times within a minute; not restarting "
                f"it again (last: {why}: {errors})"
            )
        if now - running_since >= STABLE_SECONDS:
            pause = policy.first_pause
        log(
            f"tritonserver {why} ({errors}); restarting it in {pause:g} s on the same ports "
            f"(restart {len(restarts) + 1} of at most {policy.max_per_minute} a minute)"
        )
        server.stop()  # the process group: stubs the dead server left behind
        time.sleep(pause)
        restarts.append(time.monotonic())
        pause = min(pause * 2, policy.max_pause)
        try:
            server.start(ready_timeout)
        except ServingError as exc:  # did not come up: one more failure, tried again
            failed_start = str(exc)
            log(f"restart failed: {exc}")
            continue
        failed_start = ""
        running_since = time.monotonic()
        log(f"tritonserver restarted: gRPC {server.grpc_url}")
