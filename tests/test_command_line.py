"""One grammar for every `cycada` command (cycada.command_line): each subcommand's help names it
and ends with an example that parses; the old spellings still parse, with a deprecation line;
input errors exit 2; results come as JSON where a script reads them."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex

import pytest

from cycada.benchmarks import BENCHMARKS
from cycada.cli import build_parser, main
from tests.helpers import cycada, parse_failure


def _subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        yield path
        return
    for name, child in subparsers[0].choices.items():
        yield from _subcommands(child, (*path, name))


COMMANDS = [
    *(" ".join(path) for path in _subcommands(build_parser())),
    *(f"bench {name}" for name in BENCHMARKS if name != "sweep"),
]


def _help(command: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([*command.split(), "--help"])
    return out.getvalue()


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_names_itself_and_ends_with_an_example_that_parses(command):
    text = _help(command)
    assert text.startswith(f"usage: cycada {command} "), text.splitlines()[0]
    examples = re.sub(r"\\\n\s*", " ", text.split("example")[-1]).splitlines()[1:]
    examples = [line.strip() for line in examples if line.strip().startswith("cycada ")]
    assert examples, f"cycada {command} --help shows no example"
    for example in examples:
        argv = shlex.split(example)[1:]
        assert argv[: len(command.split())] == command.split() or command == "bench"
        reason = parse_failure(argv)
        assert reason is None, f"`{example}` does not parse: {reason}"


@pytest.mark.parametrize(
    "old, new",
    [
        ("serve model_repository", "serve --repository model_repository"),
        ("serve --status localhost:8001", "serve --status --url localhost:8001"),
        ("doctor model_repository", "doctor --repository model_repository"),
        ("bench model_repository --size 64x32", "bench --repository model_repository --size 64x32"),
        ("monitor 127.0.0.1:8002 --once", "monitor --url 127.0.0.1:8002 --once"),
        ("segment-video a.mp4 --out b.mp4 --no-progress", "segment-video a.mp4 --out b.mp4 -q"),
        ("translate-dir a b --no-progress", "translate-dir a b --quiet"),
        ("train seg --model fastscnn --out r", "train seg --network fastscnn --out r"),
        ("export runs/r --trt-shapes 512x1024", "export runs/r --trt-sizes 1024x512"),
        ("bench segmenters --models drn26", "bench segmenters --network drn26"),
        ("bench seg-stages --model fcn8s", "bench seg-stages --network fcn8s"),
        ("bench served --model fastscnn", "bench served --network fastscnn"),
    ],
)
def test_an_old_spelling_parses_as_the_new_one_and_says_so(old, new, capsys, monkeypatch):
    seen = []

    def capture(self, args=None, namespace=None):
        namespace = argparse.ArgumentParser.parse_known_args(self, args, namespace)[0]
        seen.append(namespace)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    for argv in (old, new):
        with pytest.raises(SystemExit):
            main(shlex.split(argv))
    stderr = capsys.readouterr().err
    assert len(re.findall("is deprecated, use", stderr)) == 1, stderr
    old_args, new_args = (vars(ns) for ns in seen)
    assert {k: v for k, v in old_args.items() if not k.startswith("old_")} == {
        k: v for k, v in new_args.items() if not k.startswith("old_")
    }


def test_trt_sizes_are_width_by_height_and_reach_the_export_as_shapes(monkeypatch):
    captured = {}

    def fake_export(run_dir, repository, options, **kwargs):
        captured["shapes"] = options.trt_shapes
        raise SystemExit(0)

    monkeypatch.setattr("cycada.export.exporter.export_run", fake_export)
    with pytest.raises(SystemExit):
        main(["export", "runs/r", "--trt-sizes", "512x256,2048x1024"])
    assert captured["shapes"] == ((256, 512), (1024, 2048))  # (height, width) inside


@pytest.mark.parametrize(
    "argv, message",
    [
        (["export", "runs/none", "--weights-only", "--compile"], "--weights-only cannot be"),
        (["export", "runs/none", "--instances", "0"], "--instances 0"),
        (["bench", "--url", "a:1,b:2", "--no-in-process"], "the sweep measures one server"),
        (["deploy-check"], "expected --repository DIR"),
        (["doctor", "--repository", "no/such/folder"], "is not a folder"),
        (["train", "seg", "--network", "resnet", "--out", "r"], "is not a network"),
    ],
)
def test_an_input_error_exits_2_with_one_line(argv, message, capsys):
    with contextlib.suppress(SystemExit):  # argparse's own errors exit 2 themselves
        assert main(argv) == 2
    stderr = capsys.readouterr().err.strip()
    assert message in stderr and stderr.startswith(("cycada: error:", "usage: cycada"))


def test_doctor_reports_as_json():
    done = cycada("doctor", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert "onnxruntime" in report["machine"] and report["models"] == {}
