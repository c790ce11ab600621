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
        (["export", "runs/none", "--runtime-python", "2.7"], "--runtime-python '2.7': expected"),
    ],
)
def test_an_input_error_exits_2_with_one_line(argv, message, capsys):
    with contextlib.suppress(SystemExit):  # argparse's own errors exit 2 themselves
        assert main(argv) == 2
    stderr = capsys.readouterr().err.strip()
    assert message in stderr and stderr.startswith(("cycada: error:", "usage: cycada"))


VIDEO = "segment-video x.mp4 --out {tmp}/o.mp4 --url 127.0.0.1:1"
TRANSLATE = "translate-dir {tmp}/folder {tmp}/dst --url 127.0.0.1:1"
BENCH = "bench --url 127.0.0.1:1 --no-in-process"


@pytest.mark.parametrize(
    "command,message",
    [
        (f"{VIDEO} --window 0", "argument --window: expected a whole number >= 1"),
        (f"{VIDEO},127.0.0.1:99999", "--url: expected host:port[,host:port...] (a port is 1 to"),
        ("monitor --url host:port --once", "--url: expected host:port[,host:port...] (a port"),
        (f"{VIDEO} --width -5", "--width -5: expected 1 pixel or more"),
        (f"{VIDEO} --timeout -1", "--timeout: expected seconds, above 0, got '-1'"),
        (f"{VIDEO} --timeout nan", "--timeout: expected seconds, above 0"),
        (f"{VIDEO} --retry-window -1", "--retry-window: expected seconds, 0 or more"),
        (f"{VIDEO} --labels-dir {{tmp}}/file", "expected a folder, found a file"),
        (f"{VIDEO} --csv {{tmp}}/folder", "expected a file's path, found a folder"),
        (f"{VIDEO} --out {{tmp}}/v.mp4", "v.mp4: expected a path ending in .mp4"),
        (f"{TRANSLATE} --timeout 0", "--timeout: expected seconds, above 0, got '0'"),
        ("translate-dir {tmp}/folder {tmp}/file", "file is a file: expected a folder"),
        ("monitor --url 127.0.0.1:1 --once --over -3", "--over -3.0: expected seconds, 0 or more"),
        (f"{BENCH} --seconds 0", "argument --seconds: expected seconds, above 0, got '0'"),
        (f"{BENCH} --warmup -1", "argument --warmup: expected seconds, 0 or more"),
        ("bench segmenters --threads 0", "argument --threads: expected a whole number >= 1"),
        ("bench segmenters --engines nope", "--engines nope: expected some of eager, aoti"),
        ("bench segmenters --run {tmp}/nope", "run folder {tmp}/nope does not exist"),
        ("bench segmenters --run {tmp}/file", "{tmp}/file does not exist (expected the --out"),
        ("bench streams --streams 0", "argument --streams: expected a whole number >= 1"),
        ("data scenes --out {tmp}/file --count 2", "--out {tmp}/file: expected a folder, found"),
        ("data scenes --out {tmp}/s --count 0", "argument --count: expected a whole number >= 1"),
        ("data clip --out {tmp}/file", "--out {tmp}/file: expected a path ending in .mp4"),
        ("data clip --out {tmp}/c.mp4 --frames -3", "argument --frames: expected a whole number"),
        ("data clip --out {tmp}/c.mp4 --fps 0", "--fps: expected frames per second, above 0"),
        ("data video --images {tmp}/file --out {tmp}/c.mp4", "expected a folder of images"),
    ],
)  # fmt: skip
def test_a_bad_option_is_one_line_before_any_work(tmp_path, command, message, capsys):
    """Refused before a frame is read or a server is asked (none answers at the URL), in one
    line, nothing written: each of these ran a whole video first, wrote an empty or misnamed
    file, or ended in a traceback."""
    (tmp_path / "file").write_text("mine")
    (tmp_path / "v.mp4").mkdir()
    (tmp_path / "folder").mkdir()
    before = sorted(tmp_path.rglob("*"))
    try:
        code = main(command.format(tmp=tmp_path).split())
    except SystemExit as exc:  # argparse's own errors exit 2 themselves
        code = exc.code
    assert code == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err.strip().splitlines()[-1]
    assert sorted(tmp_path.rglob("*")) == before and (tmp_path / "file").read_text() == "mine"


def test_doctor_reports_as_json():
    done = cycada("doctor", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert "onnxruntime" in report["machine"] and report["models"] == {}
