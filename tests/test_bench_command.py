"""`cycada bench NAME`: every benchmark under one command, each result with the same header."""

from __future__ import annotations

import json

from cycada.cli import main


def test_bench_subcommand_writes_its_result_with_the_shared_header(tmp_path, capsys):
    code = main(
        ["bench", "pixel-stage", "--batch", "2", "--size", "28", "--generator-width", "4"]
        + ["--discriminator-width", "4", "--steps", "1", "--out", str(tmp_path)]
    )
    assert code == 0
    result = json.loads((tmp_path / "pixel_stage.json").read_text())
    header = result["header"]
    assert list(result)[0] == "header" and result["with_semantic"] > 0
    assert header["machine"]["cpus"] >= 1 and "torch" in header["versions"]
    assert header["utc"] and "command" in header
    assert '"semantic_cost"' in capsys.readouterr().out


def test_bench_help_lists_every_benchmark(capsys):
    try:
        main(["bench", "--help"])
    except SystemExit as exit_:
        assert exit_.code == 0
    out = capsys.readouterr().out
    names = ("sweep", "served", "video", "streams", "segmenters", "pixel-stage", "seg-stages")
    for name in (*names, "soak", "extract", "kill-resume"):
        assert f"  {name} " in out


def _crash() -> None:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGSEGV)


def test_a_compiled_engine_that_crashes_its_process_is_reported_and_the_bench_goes_on():
    """`bench segmenters` builds each compiled engine in a child process: a segfault there (an
    AOTInductor package did that on an H200) becomes a row, not the end of the benchmark."""
    from cycada.benchmarks.segmenters import _in_child

    assert _in_child(_crash, ()).startswith("crashed")
    assert _in_child(max, (2.0, 3.0)) == 3.0


def test_bench_served_sets_server_parameters_in_valid_configs(tmp_path):
    """`bench served --server-parameters engine=eager,cuda_graphs=false`: one value per key
    in the model's config (replaced, not repeated), and the config stays valid for Triton."""
    from cycada.benchmarks.served import _key_values, set_parameters
    from cycada.export.repository import config_text, spec_for, validate_config

    (tmp_path / "segment").mkdir()
    config = tmp_path / "segment" / "config.pbtxt"
    config.write_text(config_text(spec_for("segment", "segment", 3, 19), "default"))
    set_parameters(tmp_path, "segment", _key_values("engine=eager,cuda_graphs=false"))
    set_parameters(tmp_path, "segment", {"engine": "pytorch"})
    text = config.read_text()
    assert text.count('key: "engine"') == 1 and 'string_value: "pytorch"' in text
    assert 'key: "cuda_graphs" value: { string_value: "false" }' in text
    validate_config(text, str(config))


def test_building_the_command_line_does_not_import_torch():
    """Every `cycada` call builds the whole parser first; torch (about 1.2 s to import here)
    belongs to the handlers that need it, or `cycada --help` and input errors wait for it."""
    import subprocess
    import sys

    probe = "import sys; from cycada.cli import build_parser; build_parser(); "
    probe += "print(sorted(m for m in ('torch', 'onnxruntime') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_kill_resume_kills_processes_in_sessions_of_their_own(tmp_path):
    """torchrun starts each rank in a new session: the kill must take them too, or they train
    on beside the restarted command (as they once did)."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    from cycada.benchmarks.kill_resume import descendants, kill_tree

    pid_file = tmp_path / "rank.pid"
    script = (
        "import subprocess, sys, time\n"
        "rank = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(rank.pid))\n"
        "time.sleep(60)\n"
    )
    launcher = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 20
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    rank = int(pid_file.read_text())
    assert descendants(launcher.pid) == [rank]
    kill_tree(launcher.pid)
    assert launcher.wait(timeout=10) == -9
    stat = Path(f"/proc/{rank}/stat")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:  # gone, or dead and not yet reaped by its new parent (a zombie, state Z)
            if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"process {rank} outlived the kill")


def test_the_drift_bench_copies_the_segment_model_with_its_signals_off(tmp_path):
    """`cycada bench drift --only cost` serves a copy of `segment` with `served_signals: false`
    beside it; the copy's configs are new files, the original's stay as they were."""
    from cycada.benchmarks.drift import PLAIN, add_plain_copy

    model = tmp_path / "segment"
    (model / "1").mkdir(parents=True)
    (model / "configs").mkdir()
    (model / "1" / "model.onnx").write_bytes(b"graph")
    original = 'name: "segment"\nbackend: "python"\n'
    for config in (model / "config.pbtxt", model / "configs" / "onnxruntime.pbtxt"):
        config.write_text(original)
    add_plain_copy(tmp_path)
    for config in (model / "config.pbtxt", model / "configs" / "onnxruntime.pbtxt"):
        assert config.read_text() == original
    copy = tmp_path / PLAIN
    for config in (copy / "config.pbtxt", copy / "configs" / "onnxruntime.pbtxt"):
        text = config.read_text()
        assert text.startswith(f'name: "{PLAIN}"') and '"served_signals"' in text
    assert (copy / "1" / "model.onnx").stat().st_ino == (model / "1" / "model.onnx").stat().st_ino
