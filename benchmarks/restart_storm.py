"""`cycada serve` under a restart storm: its tritonserver killed every few seconds, the port
held by another process during some restarts.

    cycada bench restart-storm --repository model_repository --seconds 60 --every 5

Starts ``cycada serve`` (the segment model) and, every ``--every`` seconds for ``--seconds``,
kills its tritonserver with SIGKILL; every ``--hold-every``-th time another process binds the
gRPC port for ``--hold`` seconds first. For each kill: seconds until the server answered
``/v2/health/ready`` again, or that ``cycada serve`` stopped, with its last line (its budget,
``--max-restarts`` a minute, spent).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from cycada.bench_results import write_results
from cycada.command_line import add_repository, at_least_one, command_parser, seconds
from cycada.serving.server import free_port


def _ready(http_port: int) -> bool:
    with contextlib.suppress(OSError):
        url = f"http://127.0.0.1:{http_port}/v2/health/ready"
        return urllib.request.urlopen(url, timeout=1).status == 200
    return False


def _tritonserver(serve_pid: int) -> int | None:
    children = Path(f"/proc/{serve_pid}/task/{serve_pid}/children")
    for pid in children.read_text().split() if children.exists() else []:
        with contextlib.suppress(OSError):
            if "tritonserver" in Path(f"/proc/{pid}/cmdline").read_text():
                return int(pid)
    return None


def _kill_and_wait(serve, server: int, ports: tuple[int, int], hold: float) -> float | None:
    """kill -9 ``server`` (holding its gRPC port for ``hold`` seconds, if any) and wait for
    ``cycada serve`` to bring up another; seconds until it was ready (None: it was not)."""
    grpc_port, http_port = ports
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    killed_at = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        os.kill(server, signal.SIGKILL)
    if hold:  # take the port as soon as the dead server's socket is gone
        while time.monotonic() - killed_at < 5:
            try:
                holder.bind(("127.0.0.1", grpc_port))
                holder.listen()
                break
            except OSError:
                time.sleep(0.005)
    back = None
    while serve.poll() is None and time.monotonic() - killed_at < 120:
        if hold and time.monotonic() - killed_at >= hold:
            holder.close()
        if _ready(http_port) and _tritonserver(serve.pid) not in (None, server):
            back = time.monotonic() - killed_at
            break
        time.sleep(0.05)
    holder.close()
    return back


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        "bench restart-storm",
        __doc__.splitlines()[0],
        "cycada bench restart-storm --repository model_repository --seconds 60 --every 5",
    )
    add_repository(parser, required=True, default=None)
    parser.add_argument("--seconds", type=seconds(), default=60.0)
    parser.add_argument("--every", type=float, default=5.0, help="seconds between kills")
    parser.add_argument(
        "--hold-every", type=at_least_one, default=3, help="hold the port every Nth kill"
    )
    parser.add_argument("--hold", type=float, default=2.0, help="seconds the port is held")
    parser.add_argument("--max-restarts", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-restart-storm"))
    args = parser.parse_args(argv)
    grpc_port, http_port = free_port(), free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "cycada.cli", "serve", "--repository", str(args.repository),
         "--model",
         "segment", "--grpc-port", str(grpc_port), "--http-port", str(http_port),
         "--metrics-port", str(free_port()), "--max-restarts", str(args.max_restarts)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    kills: list[dict] = []
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(serve.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not any(line.startswith("serving:") for line in lines):  # its start is done
            if serve.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("cycada serve did not start")
            time.sleep(0.2)
        storm_end = time.monotonic() + args.seconds
        while time.monotonic() < storm_end and serve.poll() is None:
            server = _tritonserver(serve.pid)
            if server is None:
                time.sleep(0.1)
                continue
            held = (len(kills) + 1) % args.hold_every == 0
            killed_at = time.monotonic()
            back = _kill_and_wait(serve, server, (grpc_port, http_port), args.hold if held else 0)
            kills.append({"port_held": held, "back_after_s": round(back, 2) if back else None})
            wait = args.every - (time.monotonic() - killed_at)
            if wait > 0 and serve.poll() is None:
                time.sleep(wait)
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
        reader.join(timeout=10)
    lines = [line.rstrip() for line in lines if line.strip()]
    stopped = (
        serve.returncode not in (0, None) and bool(kills) and kills[-1]["back_after_s"] is None
    )
    result = {
        "kills": len(kills),
        "every_s": args.every,
        "max_restarts_per_minute": args.max_restarts,
        "back_every_time": all(k["back_after_s"] is not None for k in kills),
        "longest_back_s": max((k["back_after_s"] or 0 for k in kills), default=0),
        "restart_failures_logged": sum("restart failed" in line for line in lines),
        "serve_stopped": stopped,
        "serve_exit_code": serve.returncode,
        "serve_last_line": lines[-1] if lines else "",
        "per_kill": kills,
    }
    write_results(args.out, "restart_storm", result)
    print(json.dumps(result))
    return 0
