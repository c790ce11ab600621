"""The one grammar of every ``cycada`` command, written once.

* sizes are ``WIDTHxHEIGHT`` (:mod:`cycada.sizes`);
* ``--network`` names an architecture (drn26, fcn8s, fastscnn), ``--model`` a served model;
* ``--url`` is a comma-separated list wherever a server is addressed;
* ``--repository DIR`` names a model repository in every command;
* ``--quiet`` (``-q``) turns progress bars off; ``--json`` prints the result for scripts;
* every parser is ``prog="cycada …"`` and ends its help with a working example.

Old spellings keep working for one release (:class:`Deprecated`): they print one line on
stderr naming the new spelling.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import urllib.parse
from pathlib import Path
from typing import Any

DEFAULT_URL = "127.0.0.1:8001"
DEFAULT_REPOSITORY = Path("model_repository")
NETWORKS = ("drn26", "fcn8s", "fastscnn")


def positive(unit: str, zero_allowed: bool = False):
    """An argparse type: a finite number of ``unit`` above 0 (or 0 too)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_allowed):
            wanted = "0 or more" if zero_allowed else "above 0"
            raise argparse.ArgumentTypeError(f"expected {unit}, {wanted}, got '{text}'")
        return value

    return parse


def seconds(zero_allowed: bool = False):
    """An argparse type: seconds above 0 (or 0 too)."""
    return positive("seconds", zero_allowed)


def at_least_one(text: str) -> int:
    """An argparse type: a whole number, 1 or more (a count of frames, images, requests)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got '{text}'")
    return value


def command_parser(name: str, description: str, example: str) -> argparse.ArgumentParser:
    """A parser for ``cycada NAME`` (e.g. ``bench video``) whose help ends with ``example``."""
    return argparse.ArgumentParser(prog=f"cycada {name}", **help_text(description, example))


def help_text(description: str, example: str) -> dict[str, Any]:
    """The description, example and formatter every (sub)parser takes."""
    return {
        "description": description,
        "epilog": f"example:\n  {example}",
        "formatter_class": argparse.RawDescriptionHelpFormatter,
    }


def warn_deprecated(old: str, new: str) -> None:
    print(f"cycada: warning: {old} is deprecated, use {new} (the old spelling goes in 0.2)",
          file=sys.stderr)  # fmt: skip


class Deprecated(argparse.Action):
    """An old spelling: stores like the new one (into ``target``, default ``dest``: a
    positional cannot name its dest) and says which to use instead."""

    def __init__(
        self, option_strings, dest, new: str, store_true: bool = False, target: str = "", **kwargs
    ):
        self.new = new
        self.store_true = store_true
        self.target = target or dest
        kwargs.setdefault("help", argparse.SUPPRESS)
        if store_true:
            kwargs.update(nargs=0, default=argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if not self.store_true and (values is None or values == []):  # a positional left out
            return
        warn_deprecated(option_string or self.metavar or self.dest, self.new)
        setattr(namespace, self.target, True if self.store_true else values)


def _port(address: str) -> int | None:
    """The port of ``host:port`` or of a URL (None when a URL names none); ValueError when it
    is not a port."""
    if "://" in address:
        return urllib.parse.urlsplit(address).port  # ValueError past 65535 or not a number
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(address)
    return int(port)


def urls(text: str) -> list[str]:
    """argparse type of ``--url``: 'host:port[,host:port...]' → a list of addresses. A port
    that is not one is refused here: the connection would fail only after its timeout."""
    found = [url.strip() for url in text.split(",") if url.strip()]
    try:
        for url in found:
            _port(url)
    except ValueError:
        found = []
    if not found:
        raise argparse.ArgumentTypeError(
            f"expected host:port[,host:port...] (a port is 1 to 65535), got '{text}'"
        )
    return found


def add_urls(
    parser: argparse.ArgumentParser, default: list[str] | None = None, help: str | None = None
) -> None:
    parser.add_argument(
        "--url",
        type=urls,
        default=[DEFAULT_URL] if default is None else default,
        metavar="HOST:PORT[,...]",
        help=help or "gRPC address(es) of the server; several are used round-robin",
    )


def add_repository(
    parser: argparse.ArgumentParser,
    required: bool = False,
    default: Path | None = DEFAULT_REPOSITORY,
    help: str = "the model repository",
    positional_alias: bool = False,
) -> None:
    """``--repository DIR``; ``positional_alias`` keeps the old positional spelling."""
    parser.add_argument(
        "--repository",
        type=Path,
        required=required and not positional_alias,
        default=default,
        metavar="DIR",
        help=help if default is None else f"{help} (default {default})",
    )
    if positional_alias:
        parser.add_argument(
            "old_repository",
            nargs="?",
            type=Path,
            action=Deprecated,
            new="--repository DIR",
            target="repository",
            metavar="REPOSITORY",
            default=None,
        )


def add_quiet(parser: argparse.ArgumentParser, old_no_progress: bool = False) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    if old_no_progress:
        parser.add_argument(
            "--no-progress", action=Deprecated, new="--quiet", store_true=True, dest="quiet"
        )


def add_json(parser: argparse.ArgumentParser, what: str = "the result") -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON")


def add_network(
    parser: argparse.ArgumentParser,
    default: str | None,
    many: bool = False,
    old: str = "--model",
    help: str | None = None,
) -> None:
    """``--network`` (one architecture, or a comma-separated list with ``many``); ``old`` is the
    spelling it replaces."""
    kind = network_list if many else network_name
    parser.add_argument(
        "--network",
        type=kind,
        default=kind(default) if default else None,
        metavar="NAME[,NAME...]" if many else "NAME",
        help=help or f"architecture{'s' if many else ''}: {', '.join(NETWORKS)}",
    )
    parser.add_argument(old, type=kind, action=Deprecated, new="--network", dest="network")


def network_name(text: str) -> str:
    if text not in NETWORKS:
        raise argparse.ArgumentTypeError(f"'{text}' is not a network: expected one of {NETWORKS}")
    return text


def network_list(text: str) -> list[str]:
    return [network_name(name.strip()) for name in text.split(",") if name.strip()]


def print_json(result: Any) -> None:
    """One JSON object on stdout: a dataclass (with its properties that are numbers) or a dict;
    paths become strings and NaN becomes null, so any JSON reader takes it."""

    if dataclasses.is_dataclass(result):
        fields = dataclasses.asdict(result)
        for name in dir(type(result)):
            if isinstance(getattr(type(result), name), property):
                fields[name] = getattr(result, name)
        result = fields

    def plain(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    print(json.dumps(plain(result), sort_keys=True), flush=True)
