"""Every `cycada` command the documents show parses with today's command line: a renamed flag or
subcommand fails here, not in a reader's terminal."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import parse_failure

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = (
    "README.md",
    "RELIABILITY.md",
    "BENCHMARKS.md",
    "model_repository/README.md",
    *sorted(str(path.relative_to(ROOT)) for path in (ROOT / "docs").glob("*.md")),
)


def documented_commands(text: str) -> Iterator[str]:
    """The `cycada ...` lines (and `torchrun ... -m cycada.cli ...`) of the shell blocks, with
    continuation lines joined, comments dropped and the block's `name="..."` variables filled
    in; a synopsis's optional parts in [brackets] are left out."""
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S):
        variables: dict[str, str] = {}
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split(" #")[0].strip()
            assignment = re.fullmatch(r'(\w+)="(.*)"', line)
            if assignment:
                variables[assignment[1]] = assignment[2]
                continue
            for name, value in variables.items():
                line = line.replace(f"${name}", value)
            line = re.sub(r"\[[^\]]*\]", "", line).rstrip("&").strip()
            if line.startswith("cycada ") or " -m cycada.cli " in line:
                yield line


def _cases() -> list[tuple[str, str]]:
    return [
        (name, command)
        for name in DOCUMENTS
        for command in documented_commands((ROOT / name).read_text())
    ]


@pytest.mark.parametrize(
    "document, command", [pytest.param(*case, id=f"{case[0]}:{case[1][:60]}") for case in _cases()]
)
def test_documented_command_parses(document, command):
    argv = shlex.split(command)
    # torchrun ... -m cycada.cli ARGS, unless it is itself the argument of a cycada command
    argv = argv[1:] if argv[0] == "cycada" else argv[argv.index("cycada.cli") + 1 :]
    reason = parse_failure(argv)
    assert reason is None, f"{document}: `{command}` does not parse: {reason}"


def test_the_documents_show_commands():
    commands = [command for _, command in _cases()]
    assert len(commands) >= 80  # the extraction still finds the blocks (93 in session 21)
    assert any("torchrun" in command for command in commands)
