"""End-to-end digits runs on tiny data: synthetic digits as source, a folder domain as target."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch

from cycada.checkpoint import load_state, read_header
from cycada.errors import CheckpointError
from cycada.training.digits.ablation import run_ablation
from cycada.training.digits.config import resolve_digits_config
from cycada.training.digits.pipeline import run_digits
from cycada.training.digits.synthetic import render_synthetic_digits
from tests.helpers import (
    TINY_DIGITS,
    as_an_older_cycada_wrote_it,
    grey_digit_folder,
    tiny_digits_config,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder_domain(tmp_path_factory) -> str:
    return grey_digit_folder(tmp_path_factory.mktemp("grey_digits"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, folder_domain):
    """One tiny run of all four stages, shared by the tests that read a finished run."""
    out = tmp_path_factory.mktemp("full_run")
    return out, run_digits(tiny_digits_config(folder_domain), out, quiet=True)


def test_full_run_writes_every_artifact(full_run):
    tmp_path, metrics = full_run
    assert list(metrics["stages"]) == ["source", "pixel", "target", "feature"]
    for stage in metrics["stages"].values():
        for domain in ("source", "target"):
            assert 0.0 <= stage[domain]["accuracy"] <= 1.0
            assert len(stage[domain]["per_class_accuracy"]) == 10
    assert metrics["final"]["stage"] == "feature"
    assert metrics["stages"]["feature"]["stop_reason"] in (
        "max_epochs",
        "no_suitable_discriminator",
    )
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert "lambda_semantic" in (tmp_path / "config.yaml").read_text()
    for stage in ("source", "pixel", "target", "feature"):
        config, meta = read_header(tmp_path / "checkpoints" / f"{stage}.safetensors")
        assert config["data"]["source"] == "synth" and meta["stage"] == stage
        assert (tmp_path / "eval" / stage / "confusion_target.png").stat().st_size > 0
    assert not list((tmp_path / "checkpoints").glob("*.resume.pt"))
    grids = sorted((tmp_path / "samples").glob("pixel_step*.png"))
    assert grids and cv2.imread(str(grids[-1])).shape[1] > 6 * 32  # six columns of images
    translated = np.load(tmp_path / "translated" / "source_train.npz")
    assert translated["images"].shape[0] == translated["labels"].shape[0] == 96
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    curves = cv2.imread(str(tmp_path / "curves.png"))  # the logged scalars, one panel a stage
    assert curves is not None and curves.shape[0] > 300


def test_stages_one_at_a_time_repeat_the_full_run_exactly(tmp_path, folder_domain, full_run):
    """Stage by stage from checkpoints, same seed: the same metrics as the one run, so a run is
    deterministic and starting a stage from the previous one's checkpoint changes nothing."""
    config = tiny_digits_config(folder_domain)
    for stage in ("source", "pixel", "target", "feature"):
        metrics = run_digits(config, tmp_path, stages=[stage], quiet=True)
        assert metrics["final"]["stage"] == stage
    assert list(metrics["stages"]) == ["source", "pixel", "target", "feature"]
    _, whole = full_run
    for stage in metrics["stages"]:
        for domain in ("source", "target"):
            assert metrics["stages"][stage][domain] == whole["stages"][stage][domain]


def test_feature_stage_can_take_f_s_as_the_source_side_network(tmp_path, folder_domain, full_run):
    """feature.reference=source: D_feat reads f_S(G(x_s)) (Eq. 5 literally), not the stage-3
    network's; only the feature stage reruns and its f_T differs from the default run's."""
    from safetensors.torch import load_file

    finished, _ = full_run
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    config = tiny_digits_config(folder_domain, "feature.reference=source")
    metrics = run_digits(config, tmp_path, stages=["feature"], restart=True, quiet=True)
    assert metrics["stages"]["feature"]["reference"] == "source"
    for stage, same in (("target", True), ("feature", False)):
        default = load_file(finished / "checkpoints" / f"{stage}.safetensors")
        changed = load_file(tmp_path / "checkpoints" / f"{stage}.safetensors")
        assert all(torch.equal(default[key], changed[key]) for key in default) == same, stage


def test_finished_stages_of_an_older_version_are_reused_after_an_upgrade(
    tmp_path, folder_domain, full_run
):
    """Options added since a run finished, left at their defaults, do not make its finished
    stages stale: nothing trains again. A value that differs still refuses the checkpoint."""
    finished, whole = full_run
    shutil.copytree(finished, tmp_path / "old", dirs_exist_ok=True)
    checkpoints = tmp_path / "old" / "checkpoints"
    for stage in ("source", "pixel", "target", "feature"):
        as_an_older_cycada_wrote_it(checkpoints / f"{stage}.safetensors")
    before = {p.name: p.read_bytes() for p in checkpoints.iterdir()}
    config = tiny_digits_config(folder_domain)
    metrics = run_digits(config, tmp_path / "old", stages=["feature"], quiet=True)
    assert metrics["stages"]["feature"]["target"] == whole["stages"]["feature"]["target"]
    assert {p.name: p.read_bytes() for p in checkpoints.iterdir()} == before  # none retrained
    assert "feature: finished output found" in (tmp_path / "old" / "log.txt").read_text()
    # the older run used another cycle weight: its pixel stage is not this config's
    shutil.copytree(finished, tmp_path / "other", dirs_exist_ok=True)
    pixel = tmp_path / "other" / "checkpoints" / "pixel.safetensors"
    as_an_older_cycada_wrote_it(pixel, {"lambda_cycle": 5.0})
    with pytest.raises(CheckpointError, match="made with a different config"):
        run_digits(config, tmp_path / "other", stages=["target"], restart=False, quiet=True)


def test_translation_fidelity_bench_reads_a_finished_run(tmp_path, folder_domain, full_run):
    from cycada.benchmarks import translation_fidelity
    from cycada.errors import DataError

    finished, _ = full_run
    argv = [str(finished), "--dataset", folder_domain, "--split", "train", "--epochs", "1"]
    assert translation_fidelity.main([*argv, "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "translation_fidelity.json").read_text())
    row = results["runs"][str(finished)]
    assert 0 <= row["reader_on_translations"] <= 100 and 0 <= row["f_s_on_translations"] <= 100
    # f_T read on the target images the reader learnt from: the run's own pixel-only accuracy
    pixel_only = full_run[1]["stages"]["target"]["target"]["accuracy"]
    assert row["f_t_on_target"] == pytest.approx(100 * pixel_only, abs=0.01)
    assert results["source"] == "synth/train"
    no_translations = tmp_path / "source_only"
    shutil.copytree(finished / "checkpoints", no_translations / "checkpoints")
    with pytest.raises(DataError, match="has no translated source set"):
        translation_fidelity.main([str(no_translations), *argv[1:]])


def test_stage_without_its_inputs_is_a_clear_error(tmp_path, folder_domain):
    from cycada.errors import CheckpointError

    with pytest.raises(
        CheckpointError, match="stage 'source' has no finished output.*--stage source"
    ):
        run_digits(tiny_digits_config(folder_domain), tmp_path, stages=["pixel"], quiet=True)


@pytest.mark.parametrize("mode", ["joint", "alternating"])
def test_joint_modes(tmp_path, folder_domain, mode):
    metrics = run_digits(
        tiny_digits_config(folder_domain, mode=mode, joint_epochs=2), tmp_path, quiet=True
    )
    assert list(metrics["stages"]) == ["source", "joint"]
    config, meta = read_header(tmp_path / "checkpoints" / "joint.safetensors")
    assert meta["stage"] == "joint" and config["mode"] == mode
    logged = {
        key
        for line in (tmp_path / "scalars.jsonl").read_text().splitlines()
        for key in json.loads(line)
    }
    # only the joint objective sends f_T's feature-GAN term into G_S→T
    assert ("gen_source_side" in logged) == (mode == "joint")


def test_gain_over_control_only_for_adapted_rows_and_only_beside_a_control():
    from cycada.training.digits.ablation import with_gain_over_control

    rows = [
        {"row": "source_only", "target_accuracy": 57.5},
        {"row": "full", "target_accuracy": 94.25},
        {"row": "control", "target_accuracy": 65.75},
        {"row": "target_supervised", "target_accuracy": 98.0},
    ]
    gains = {r["row"]: r["over_control"] for r in with_gain_over_control(rows)}
    assert gains == {"source_only": None, "full": 28.5, "control": None, "target_supervised": None}
    alone = with_gain_over_control([r for r in rows if r["row"] != "control"])
    assert all(r["over_control"] is None for r in alone)


def test_ablation_rows_share_stages_and_write_one_table(tmp_path, folder_domain):
    config = tiny_digits_config(folder_domain, "feature.max_epochs=1")
    names = ["source_only", "control", "no_feat", "full", "target_supervised"]
    table = run_ablation(config, tmp_path, rows=names, quiet=True)
    assert "| Source only |" in table and "| CyCADA (Full) |" in table
    assert "| Target fully supervised (trained on the evaluation images) |" in table
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["row"] for r in rows] == names
    # the control trains f_S alone for as many steps as f_S and f_T get in the full row:
    # 96 source images in batches of 32 → 3 steps an epoch; 2 source + 1 target epochs; one
    # feature epoch of max(96, 80) // 32 = 3 steps → 12 steps = 4 epochs
    by_row = {r["row"]: r for r in rows}
    assert by_row["control"]["source_epochs"] == 4 and by_row["source_only"]["source_epochs"] == 2
    supervised = json.loads((tmp_path / "target_supervised" / "metrics.json").read_text())
    source_only = json.loads((tmp_path / "source_only" / "metrics.json").read_text())
    assert supervised["source"] == supervised["target"]
    assert supervised["model"] == source_only["model"]  # the rows' network, not re-chosen
    assert (tmp_path / "results.csv").read_text().startswith("row,model,")
    # an adapted row's gain is read against the control, in the table and in each format
    gain = round(by_row["full"]["target_accuracy"] - by_row["control"]["target_accuracy"], 2)
    assert by_row["full"]["over_control"] == gain
    assert by_row["source_only"]["over_control"] is None
    assert "| Over the control (points) |" in table and f"| {gain:+.2f} |" in table
    assert "over_control" in (tmp_path / "results.csv").read_text().splitlines()[0]
    # the source model is trained once, the pixel stage once for no_feat and full
    assert "reusing" in (tmp_path / "full" / "log.txt").read_text()
    # source models: one shared by source_only/no_feat/full, the control's, target-supervised's
    assert len(list((tmp_path / "_stage_cache").glob("source-*"))) == 3
    assert len(list((tmp_path / "_stage_cache").glob("pixel-*"))) == 1
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert list(full["stages"]) == ["source", "pixel", "target", "feature"]  # reused ones too
    # the cache as an older cycada left it (its fingerprints in the names): a row run again
    # after the upgrade still finds its stages there and trains nothing
    cache = tmp_path / "_stage_cache"
    for stage in ("pixel", "target"):
        (entry,) = cache.glob(f"{stage}-*")
        as_an_older_cycada_wrote_it(entry)
        entry.rename(cache / f"{stage}-0123456789abcdef.safetensors")
    shutil.rmtree(tmp_path / "no_feat")
    run_ablation(config, tmp_path, rows=["no_feat"], quiet=True)
    log = (tmp_path / "no_feat" / "log.txt").read_text()
    assert "target: reusing target-0123456789abcdef.safetensors" in log
    assert log.count("finished output found") == 3


def cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cycada.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # SIGINT as a terminal gives it, also when the tests run in the background (SIG_IGN)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **kwargs,
    )


def test_interrupted_run_resumes_and_keeps_good_checkpoints(tmp_path, folder_domain):
    args = [
        "train",
        "digits",
        "--source",
        "synth",
        "--target",
        folder_domain,
        "--preset",
        "quick",
        "--eval-split",
        "train",
        "--out",
        str(tmp_path),
        "--quiet",
    ]
    sets = [f"--set={s}" for s in TINY_DIGITS if not s.startswith("pixel.max_steps")]
    sets += ["--set=pixel.max_steps=0", "--set=pixel.epochs=6"]
    process = cli(*args, *sets)
    try:
        resume_file = tmp_path / "checkpoints" / "pixel.resume.pt"
        deadline = time.monotonic() + 120
        while not resume_file.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        assert resume_file.exists(), process.communicate()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "resume when the same command runs again" in err
    assert load_state(resume_file)["epoch"] >= 1  # the last completed epoch is intact
    read_header(tmp_path / "checkpoints" / "source.safetensors")  # earlier stage intact
    process = cli(*args, *sets)
    try:
        out, err = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 0, err
    log = (tmp_path / "log.txt").read_text()
    assert "source: finished output found" in log
    assert "pixel: resuming at epoch" in log
    assert "target accuracy" in out


@pytest.mark.parametrize(
    "args,message",
    [
        (["--source", "svhm"], "unknown digit data set 'svhm'"),
        (["--set", "pixel.lamda_cycle=3"], "unknown config key 'pixel.lamda_cycle'"),
        (["--source", "folder:/nonexistent/digits"], "folder data set /nonexistent/digits"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, args, message):
    process = cli("train", "digits", "--out", str(tmp_path / "run"), "--quiet", *args)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2
    assert err.strip().count("\n") == 0 and message in err, err


def test_cli_eval_of_truncated_checkpoint(tmp_path):
    path = tmp_path / "source.safetensors"
    path.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a"')
    process = cli("eval", "digits", str(path), "--dataset", "synth")
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2 and "truncated or corrupt" in err and err.count("\n") == 1


def test_cli_eval_of_a_finished_run(tmp_path, folder_domain, full_run):
    run_dir, _ = full_run
    process = cli(
        "eval",
        "digits",
        str(run_dir / "checkpoints" / "source.safetensors"),
        "--dataset",
        folder_domain,
        "--split",
        "train",
        "--out",
        str(tmp_path / "ev"),
    )
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "accuracy" in out and (tmp_path / "ev" / "confusion.png").exists()


@pytest.fixture(scope="module")
def unlabelled_folder(tmp_path_factory) -> str:
    """The same kind of target images with no class folders: a domain without labels."""
    root = tmp_path_factory.mktemp("grey_digits_unlabelled")
    images, _ = render_synthetic_digits(60, seed=98)
    for index, image in enumerate(images):
        cv2.imwrite(str(root / f"{index:03d}.png"), 255 - cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
    return f"folder:{root}"


def test_unlabelled_folder_target_with_and_without_an_eval_set(
    tmp_path, folder_domain, unlabelled_folder
):
    metrics = run_digits(tiny_digits_config(unlabelled_folder), tmp_path / "free", quiet=True)
    assert list(metrics["stages"]) == ["source", "pixel", "target", "feature"]
    for stage in metrics["stages"].values():
        assert "target" not in stage and stage["source"]["accuracy"] >= 0
        signals = stage["target_label_free"]
        assert signals["images"] == 6 and 0.1 <= signals["mean_confidence"] <= 1
        assert abs(sum(signals["class_shares"].values()) - 1) < 1e-6
    assert metrics["stages"]["feature"]["target_label_free"]["previous_stage"] == "target"
    assert metrics["final"]["evaluation"] == "label-free"
    assert "label-free signals on 6 held-out images" in metrics["protocol"]["target_eval"]

    measured = run_digits(
        tiny_digits_config(unlabelled_folder, f"data.eval_set={folder_domain}"),
        tmp_path / "free",
        quiet=True,
    )  # nothing retrains: the evaluation set changes no weights
    assert measured["final"]["evaluation"] == "labelled"
    assert 0 <= measured["stages"]["feature"]["target"]["accuracy"] <= 1
    assert "finished output found" in (tmp_path / "free" / "log.txt").read_text()


def test_unlabelled_folder_refused_as_source_or_eval_set(tmp_path, unlabelled_folder):
    from cycada.errors import DataError

    config = tiny_digits_config(unlabelled_folder)
    with pytest.raises(DataError, match="source folder:.* has no labels"):
        run_digits(
            resolve_digits_config(
                "quick", sets=TINY_DIGITS, overrides={"data": {"source": unlabelled_folder}}
            ),
            tmp_path / "a",
            quiet=True,
        )
    with pytest.raises(DataError, match="evaluation set folder:.* has no labels"):
        run_digits(
            tiny_digits_config("synth", f"data.eval_set={unlabelled_folder}"),
            tmp_path / "b",
            quiet=True,
        )
    assert config.data.target == unlabelled_folder


def test_kill_9_repeatedly_every_resume_finishes_with_valid_checkpoints(tmp_path, folder_domain):
    from cycada.benchmarks.kill_resume import kill_and_resume

    sets = [f"--set={s}" for s in TINY_DIGITS if not s.startswith("pixel.max_steps")]
    sets += ["--set=pixel.max_steps=0", "--set=pixel.epochs=3"]
    command = [
        sys.executable, "-m", "cycada.cli", "train", "digits", "--source", "synth",
        "--target", folder_domain, "--preset", "quick", "--eval-split", "train", "--quiet", *sets,
    ]  # fmt: skip
    # five kills here (every stage is hit); `cycada bench kill-resume --kills 10` is the figure
    result = kill_and_resume(command, tmp_path, kills=5, seed=1)
    assert result["killed_mid_run"] >= 3  # kills spread over the stages, each after progress
    assert {"source.safetensors", "feature.safetensors"} <= set(result["checkpoints"])
    # resuming restores weights, optimiser and data order from the last finished epoch: the
    # result is the uninterrupted one (the CPU runs are deterministic)
    assert result["killed"]["target_accuracy"] == pytest.approx(
        result["uninterrupted"]["target_accuracy"], abs=0.05
    )


def test_a_second_training_into_the_same_folder_is_refused_until_the_first_dies(
    tmp_path, folder_domain
):
    """Two trainings into one --out would overwrite each other's checkpoints: the second is
    refused in one line while the first runs; kill -9 of the first frees the folder (the
    kernel drops the lock with the process) and the same command takes it over."""
    sets = [f"--set={s}" for s in TINY_DIGITS if not s.startswith("pixel.max_steps")]
    command = [
        sys.executable, "-m", "cycada.cli", "train", "digits", "--source", "synth",
        "--target", folder_domain, "--preset", "quick", "--eval-split", "train", "--quiet",
        "--out", str(tmp_path / "run"), *sets, "--set=pixel.max_steps=0", "--set=pixel.epochs=3",
    ]  # fmt: skip
    lock = tmp_path / "run" / ".run.lock"

    def holds_the_lock(process: subprocess.Popen) -> None:
        deadline = time.monotonic() + 120
        while not (lock.exists() and lock.read_text().strip() == str(process.pid)):
            assert process.poll() is None and time.monotonic() < deadline, "it never ran"
            time.sleep(0.05)

    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        holds_the_lock(first)
        second = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        (line,) = second.stderr.strip().splitlines()
        assert f"another training is writing into it (pid {first.pid})" in line
    finally:
        first.kill()
        first.wait()
    # the same command takes the folder over (that a resumed run finishes as an uninterrupted
    # one is test_kill_9_repeatedly_every_resume_finishes_with_valid_checkpoints's point)
    third = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        holds_the_lock(third)
    finally:
        third.kill()
        _, errors = third.communicate()
    assert "another training" not in errors
