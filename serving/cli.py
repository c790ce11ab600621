"""`cycada serve`: run Triton on a model repository, or show a running server's status."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from cycada.command_line import (
    add_json,
    add_repository,
    add_urls,
    print_json,
    urls,
    warn_deprecated,
)
from cycada.errors import ConfigError, ServingError
from cycada.grpc_security import (
    AUTH_HEADER,
    GrpcSecurity,
    add_client_security,
    is_loopback,
    read_secret,
    security_from_args,
)
from cycada.serving.server import PROFILES
from cycada.serving.supervisor import RestartPolicy, supervise


class _Status(argparse.Action):
    """``--status``; the old ``--status URL`` stores URL as ``--url`` and says so."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.status = True
        if values is not None:
            warn_deprecated("--status URL", "--status --url URL")
            namespace.url = urls(values)


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve",
        help="serve a model repository with the real Triton server (Ctrl-C stops it)",
        description="Start tritonserver on REPOSITORY (loopback by default), wait until every "
        "model is ready, print the endpoints, and stop cleanly on Ctrl-C or SIGTERM. "
        "With --status, show the health, models and versions of the running servers at --url.",
        epilog="examples:\n  cycada serve --repository model_repository\n"
        "  cycada serve --repository model_repository --profile onnxruntime --host 0.0.0.0 "
        "--insecure\n  cycada serve --status --url localhost:8001 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_repository(parser, positional_alias=True)
    _add_endpoint_arguments(parser)
    _add_security_arguments(parser)
    _add_supervision_arguments(parser)
    parser.add_argument(
        "--status",
        nargs="?",
        action=_Status,
        default=False,
        help="show the status of the servers at --url (gRPC) instead of serving",
    )
    add_urls(parser, help="with --status: the servers' gRPC address(es) (default 127.0.0.1:8001)")
    add_json(parser, "--status")
    parser.set_defaults(handler=run)
    _register_deploy_check(commands)


def _add_endpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the server listens, what it loads and how."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument(
        "--http-host",
        default="127.0.0.1",
        help="address of the HTTP endpoint: /v2/health/live and /v2/health/ready for probes "
        "(inference there needs the secret; default loopback)",
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address of the Prometheus metrics (/metrics: counters and latencies, no image "
        "data; default loopback)",
    )
    parser.add_argument(
        "--poll",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="look for new versions (a new cycada export) every SECONDS and load them while the "
        "serving version answers; 0 loads only what is there at start (default 5)",
    )
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default="default",
        help="default: Python backend (the export's fastest engine); onnxruntime, tensorrt, "
        "openvino: native backends (NVIDIA's Triton container)",
    )
    parser.add_argument("--model", action="append", default=[], help="serve only these models")
    parser.add_argument(
        "--log-file",
        type=Path,
        help="server log, appended (default: logs/tritonserver-<repository>-<port>.log beside "
        "the repository)",
    )
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    parser.add_argument(
        "--cpus", help="run the server on these CPUs only, e.g. 0 or 0,2-3 (a client beside it)"
    )


def _add_security_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate: gRPC over TLS")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument(
        "--auth-secret-file",
        type=Path,
        help="file holding the secret clients must send (header cycada-auth) on inference, "
        "shared-memory and model-repository calls",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="serve on a non-loopback --host without TLS and secret (a warning is printed)",
    )
    add_client_security(parser, for_status=True)


def _add_supervision_arguments(parser: argparse.ArgumentParser) -> None:
    """What the supervisor does when the server dies or hangs."""
    parser.add_argument(
        "--no-restart",
        action="store_true",
        help="exit when the server dies instead of restarting it on the same ports",
    )
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=5,
        help="restarts allowed within any minute before giving up (default 5)",
    )
    parser.add_argument(
        "--restart-pause",
        type=float,
        default=RestartPolicy.first_pause,
        metavar="SECONDS",
        help="pause before the first restart; it doubles with each quick restart, up to "
        f"{RestartPolicy.max_pause:g} s (default {RestartPolicy.first_pause:g})",
    )
    parser.add_argument(
        "--hang-timeout",
        type=float,
        default=RestartPolicy.hang_seconds,
        metavar="SECONDS",
        help="restart a server whose process lives but has not answered /v2/health/live for "
        f"SECONDS (default {RestartPolicy.hang_seconds:g})",
    )


def _register_deploy_check(commands: argparse._SubParsersAction) -> None:
    check = commands.add_parser(
        "deploy-check",
        help="check that a model repository serves where manifests deploy it",
        description="For each tritonserver the manifests run (Kubernetes Deployments, Jobs, "
        "Pods; KServe InferenceServices with the Triton runtime), or the embedded server "
        "without manifests: every model loads in the profile named (--model-config-name), "
        "Python-backend versions carry their runtime for the image's Python, the models named "
        "(--load-model) exist, and every file is readable by the server's user. Exit 2 naming "
        "every problem.",
        epilog="example:\n  cycada deploy-check --repository model_repository "
        "deploy/kubernetes/triton.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_repository(check, default=None)
    check.add_argument("manifests", type=Path, nargs="*", metavar="MANIFEST")
    check.set_defaults(handler=run_deploy_check)


def run_deploy_check(args: argparse.Namespace) -> int:
    # imported when the command runs: the command line starts without it
    from cycada.serving.deploy_check import deploy_check

    if args.repository is None:  # the old spelling: the repository first, then the manifests
        if not args.manifests or not args.manifests[0].is_dir():
            raise ConfigError("deploy-check: expected --repository DIR (the model repository)")
        warn_deprecated("deploy-check REPOSITORY", "deploy-check --repository REPOSITORY")
        args.repository, args.manifests = args.manifests[0], args.manifests[1:]
    for line in deploy_check(args.repository, args.manifests):
        print(line)
    return 0


def _show_status(args: argparse.Namespace) -> int:
    """``--status``: each server of ``--url`` (the old ``--status URL`` too), as text or JSON."""
    # imported when the command runs: the command line starts without it
    from cycada.serving.status import servers_states, status_text

    states = servers_states(args.url, security=security_from_args(args))
    if args.json:
        print_json(states)
    else:
        print("\n".join(status_text(state) for state in states), flush=True)
    down = [state["url"] for state in states if "error" in state]
    if down:  # every server reported; the exit says that one is down
        raise ServingError(f"{len(down)} of {len(states)} servers not answering: {', '.join(down)}")
    return 0


def _server_options(args: argparse.Namespace, secret: str):
    # imported when the command runs: the command line starts without it
    from cycada.serving.server import ServerOptions, parse_cpus

    return ServerOptions(
        args.repository,
        host=args.host,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        profile=args.profile,
        log_file=args.log_file,
        models=args.model,
        cpus=parse_cpus(args.cpus) if args.cpus else None,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        auth_secret=secret,
        insecure=args.insecure,
        http_host=args.http_host,
        metrics_host=args.metrics_host,
        poll_seconds=args.poll,
    )


def _warn_about_exposed_endpoints(args: argparse.Namespace) -> None:
    if args.insecure and not is_loopback(args.host):
        print(
            f"warning: serving on {args.host} without TLS or a secret (--insecure): anyone who "
            "reaches the port can run inference; model loading and shared memory stay locked",
            file=sys.stderr,
            flush=True,
        )
    for name, host, what in (
        ("--http-host", args.http_host, "health probes and, with the secret, inference over "
         "plain HTTP"),
        ("--metrics-host", args.metrics_host, "Prometheus metrics (no image data)"),
    ):  # fmt: skip
        if not is_loopback(host):
            print(f"warning: {name} {host}: {what} reachable from the network", file=sys.stderr)


def _serve_until_stopped(server, args: argparse.Namespace, secret: str) -> None:
    """Start, print the status and the endpoints, then restart the server whenever it dies
    (:mod:`.supervisor`) until Ctrl-C or SIGTERM."""
    server.start(args.ready_timeout)
    # imported when the command runs: the command line starts without it
    from cycada.serving.status import server_status

    local = GrpcSecurity(
        ssl=bool(args.tls_cert),
        root_cert=args.tls_cert,
        auth_header=(AUTH_HEADER, secret) if secret else None,
    )
    try:
        print(server_status(server.grpc_url, security=local), flush=True)
    except ServingError as exc:  # e.g. a certificate not valid for this address
        print(f"(status not shown: {exc})", flush=True)
    print(f"serving: gRPC {server.grpc_url}  HTTP {server.http_url}  (Ctrl-C stops)", flush=True)
    policy = RestartPolicy(
        enabled=not args.no_restart,
        max_per_minute=args.max_restarts,
        first_pause=args.restart_pause,
        hang_seconds=args.hang_timeout,
    )
    supervise(server, policy, args.ready_timeout, lambda line: print(line, flush=True))


def _check_options(args: argparse.Namespace) -> None:
    """The supervisor's options (the server's own: ServerOptions.check)."""
    if args.max_restarts < 0:
        raise ConfigError(f"--max-restarts {args.max_restarts}: expected 0 or more")
    if args.restart_pause < 0:
        raise ConfigError(f"--restart-pause {args.restart_pause:g}: expected seconds, 0 or more")
    if args.hang_timeout <= 0:
        raise ConfigError(f"--hang-timeout {args.hang_timeout:g}: expected seconds, more than 0")
    if args.poll < 0:
        raise ConfigError(f"--poll {args.poll:g}: expected seconds, 0 or more (0: no polling)")


def run(args: argparse.Namespace) -> int:
    if args.status:
        return _show_status(args)
    _check_options(args)
    secret = read_secret(args.auth_secret_file) if args.auth_secret_file else ""
    # imported when the command runs: the command line starts without it
    from cycada.serving.server import TritonServer

    server = TritonServer(_server_options(args, secret))
    _warn_about_exposed_endpoints(args)
    stopping = []

    def request_stop(signum, frame):  # SIGTERM behaves like Ctrl-C
        stopping.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, request_stop)
    print(
        f"starting tritonserver on {args.repository} (profile {args.profile}, "
        f"log {server.log_file})",
        flush=True,
    )
    try:
        _serve_until_stopped(server, args, secret)
    except KeyboardInterrupt:
        print("stopping tritonserver...", file=sys.stderr, flush=True)
        code = server.stop()
        print(f"stopped (exit code {code})", file=sys.stderr)
        return 0
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
