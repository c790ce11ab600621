"""How a client reaches a server that is not on loopback: TLS and the shared-secret header.

``cycada serve --host`` other than loopback requires TLS (``--tls-cert``/``--tls-key``) and a
secret (``--auth-secret-file``) that Triton checks on inference, shared-memory and
model-repository calls (its restricted-protocol options), or an explicit ``--insecure``.
Clients pass ``--ssl`` (``--root-cert`` for a self-signed certificate) and
``--auth-header cycada-auth=SECRET``.
"""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cycada.errors import ConfigError

AUTH_HEADER = "cycada-auth"  # gRPC metadata keys are lower case
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"  # Triton expects this before a restricted key


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_auth_header(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` (or ``KEY: VALUE``) → (lower-case key, value). The error never repeats
    the text: it may hold the secret."""
    separator = "=" if "=" in text else ":"
    key, _, value = text.partition(separator)
    if not key.strip() or not value.strip():
        raise ConfigError(
            f"--auth-header: expected KEY=VALUE, e.g. {AUTH_HEADER}=SECRET (the value given is "
            "not shown); --auth-secret-file FILE keeps the secret out of the command line"
        )
    return key.strip().lower(), value.strip()


def read_secret(path: Path, option: str = "--auth-secret-file") -> str:
    """The secret a file holds (one line, surrounding space dropped); errors name the file,
    never its content."""
    try:
        secret = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not a text file"
        raise ConfigError(f"{option} {path}: cannot be read ({reason})") from None
    if not secret:
        raise ConfigError(f"{option} {path} is empty")
    return secret


@dataclass(frozen=True)
class GrpcSecurity:
    """What a gRPC client needs for a secured server (all off for loopback)."""

    ssl: bool = False
    root_cert: Path | None = None
    auth_header: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if self.root_cert is not None and not Path(self.root_cert).is_file():
            raise ConfigError(f"--root-cert {self.root_cert} does not exist")

    def client(self, url: str):
        # tritonclient takes a second to import: only when a server is called
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(
            url,
            ssl=self.ssl or self.root_cert is not None,
            root_certificates=str(self.root_cert) if self.root_cert else None,
        )

    @property
    def headers(self) -> dict[str, str] | None:
        """gRPC metadata: the key as Triton's restricted protocols expect it."""
        if not self.auth_header:
            return None
        key, value = self.auth_header
        if not key.startswith(GRPC_HEADER_PREFIX):
            key = GRPC_HEADER_PREFIX + key
        return {key: value}


def add_client_security(parser: argparse.ArgumentParser, for_status: bool = False) -> None:
    """--ssl, --root-cert, --auth-header on a command that talks to a server."""
    what = " (with --status)" if for_status else ""
    parser.add_argument("--ssl", action="store_true", help=f"connect over TLS{what}")
    parser.add_argument(
        "--root-cert", type=Path, help=f"PEM root certificate to trust (self-signed){what}"
    )
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument(
        "--auth-header",
        metavar="KEY=VALUE",
        help=f"header sent with every call, e.g. {AUTH_HEADER}=SECRET (visible to ps: prefer "
        f"--auth-secret-file){what}",
    )
    if not for_status:  # `cycada serve` has its own --auth-secret-file, used by --status too
        secret.add_argument(
            "--auth-secret-file",
            type=Path,
            metavar="FILE",
            help=f"file holding the server's secret, sent as the {AUTH_HEADER} header",
        )


def security_from_args(args: argparse.Namespace) -> GrpcSecurity:
    header = parse_auth_header(args.auth_header) if args.auth_header else None
    if getattr(args, "auth_secret_file", None):
        header = (AUTH_HEADER, read_secret(args.auth_secret_file))
    return GrpcSecurity(ssl=args.ssl, root_cert=args.root_cert, auth_header=header)
