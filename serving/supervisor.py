"""Keep a tritonserver running: restart it on the same ports when it dies, within limits.

``cycada serve`` runs the server under :func:`supervise`. A server that exits by itself (a
crash, ``kill -9``, out of memory) is restarted after a pause that doubles with each quick
failure (1 s, 2 s, 4 s ... up to 30 s; back to 1 s after a minute of good running), at most
``max_per_minute`` times in any minute; each restart is logged with the server's last error
lines. Clients that wait out a restart (``--retry-window``) resend what was in flight.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass

from cycada.errors import ServingError
from cycada.serving.server import TritonServer

STABLE_SECONDS = 60.0  # a server that ran this long resets the backoff


@dataclass(frozen=True)
class RestartPolicy:
    enabled: bool = True
    max_per_minute: int = 5
    first_pause: float = 1.0
    max_pause: float = 30.0


def supervise(
    server: TritonServer,
    policy: RestartPolicy,
    ready_timeout: float,
    log: Callable[[str], None],
) -> None:
    """Block while the (started) server runs; restart it when it dies. Returns never: raises
    ServingError when restarts are off or over the limit, KeyboardInterrupt on Ctrl-C."""
    restarts: collections.deque[float] = collections.deque()
    pause = policy.first_pause
    running_since = time.monotonic()
    while True:
        if server.process is None:
            raise ServingError("supervise() needs a started server")
        code = server.process.wait()
        errors = server.errors() or f"no error lines; see {server.log_file}"
        if not policy.enabled:
            raise ServingError(f"tritonserver stopped by itself with code {code}: {errors}")
        now = time.monotonic()
        while restarts and now - restarts[0] > 60.0:
            restarts.popleft()
        if len(restarts) >= policy.max_per_minute:
            raise ServingError(
                f"tritonserver died {len(restarts) + 1} times within a minute; not restarting "
                f"it again (last exit code {code}: {errors})"
            )
        if now - running_since >= STABLE_SECONDS:
            pause = policy.first_pause
        log(
            f"tritonserver exited with code {code} ({errors}); restarting it in {pause:g} s "
            f"on the same ports (restart {len(restarts) + 1} of at most "
            f"{policy.max_per_minute} a minute)"
        )
        server.stop()  # the process group: stubs the dead server left behind
        time.sleep(pause)
        restarts.append(time.monotonic())
        pause = min(pause * 2, policy.max_pause)
        try:
            server.start(ready_timeout)
        except ServingError as exc:  # did not come up: counts as one more death
            log(f"restart failed: {exc}")
            continue
        running_since = time.monotonic()
        log(f"tritonserver restarted: gRPC {server.grpc_url}")
