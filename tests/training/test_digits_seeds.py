"""`cycada ablate digits --seeds`: one ablation process per seed, then the table of means and
paired differences; a seed that fails leaves the others' table and names its log."""

from __future__ import annotations

import json
import re

import pytest

from cycada.cli import main
from cycada.training.core import seed_runs
from tests.helpers import TINY_DIGITS, grey_digit_folder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def grey_digits(tmp_path_factory) -> str:
    return grey_digit_folder(tmp_path_factory.mktemp("grey_digits"))


def ablate(target: str, out, *extra: str) -> list[str]:
    sets = [item for pair in TINY_DIGITS for item in ("--set", pair)]
    return [
        *("ablate", "digits", "--source", "synth", "--target", target, "--eval-split", "train"),
        *("--preset", "quick", "--device", "cpu", "--rows", "control,no_pixel,full"),
        *(*sets, "--set", "feature.max_epochs=1", "--quiet", "--out", str(out), *extra),
    ]


def test_seeds_run_apart_and_the_summary_pairs_them(tmp_path, grey_digits, capsys, monkeypatch):
    out = tmp_path / "seeds"
    out.mkdir()
    (out / "seed-1").write_text("a file where seed 1's run folder goes")  # seed 1 cannot run
    # 2: the seed refused its input (its --out a file), in its own one line
    assert main(ablate(grey_digits, out, "--seeds", "0-1", "--jobs", "2")) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("cycada: error: seed 1 failed (seed 1: ")
    assert "seed-1/control: expected a folder, found a file" in error
    assert f"log {out / 'seed-1.log'}" in error and "holds the seeds that finished" in error
    summary = json.loads((out / "results.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["finished"] == [0]
    assert "Not finished: seed 1" in (out / "results.md").read_text()

    (out / "seed-1").unlink()  # the fault gone, the same command trains only what is missing
    monkeypatch.setattr(seed_runs, "PROGRESS_EVERY_S", 0.5)
    assert main(ablate(grey_digits, out, "--seeds", "0-1", "--jobs", "2")) == 0
    printed = capsys.readouterr().out
    assert "seed 0: finished" in printed and "seed 1: finished" in printed
    # while they ran, a line at a time said where each one was
    assert re.search(r"^\[\d+ min\] seed 0: (starting|row \d of 3)", printed, re.MULTILINE)
    assert "finished output found" in (out / "seed-0" / "full" / "log.txt").read_text()
    summary = json.loads((out / "results.json").read_text())
    assert summary["finished"] == [0, 1]
    seeds = {
        seed: {
            row["row"]: row["target_accuracy"]
            for row in json.loads((out / f"seed-{seed}" / "results.json").read_text())["rows"]
        }
        for seed in (0, 1)
    }
    rows = {row["row"]: row for row in summary["rows"]}
    assert list(rows) == ["control", "no_pixel", "full"]
    for name, row in rows.items():
        assert row["per_seed"] == {"0": seeds[0][name], "1": seeds[1][name]}
        assert row["mean"] == pytest.approx((seeds[0][name] + seeds[1][name]) / 2, abs=0.006)
    differences = {(d["first"], d["second"]): d for d in summary["differences"]}
    assert list(differences) == [("no_pixel", "control"), ("full", "control"), ("full", "no_pixel")]
    full_vs_feature = differences[("full", "no_pixel")]
    for seed in (0, 1):
        gap = seeds[seed]["full"] - seeds[seed]["no_pixel"]
        assert full_vs_feature["per_seed"][str(seed)] == pytest.approx(gap, abs=0.006)
    low, high = full_vs_feature["ci95"]
    assert low <= full_vs_feature["mean"] <= high
    table = (out / "results.md").read_text()
    assert "| Model | seed 0 | seed 1 | mean | sd |" in table
    assert "| full − feature-only |" in table and "control" in table
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # seeds per row
    # every seed ran the one resolved config, its seed aside
    for seed in (0, 1):
        config = (out / f"seed-{seed}" / "full" / "config.yaml").read_text()
        assert f"seed: {seed}\n" in config and "max_steps: 4" in config

    # other settings into the same folder: each seed refuses (its rows were made with another
    # config), the input's error (exit 2), and no seed's older table counts as this command's
    assert main(ablate(grey_digits, out, "--set", "source.epochs=3", "--seeds", "0-1")) == 2
    error = capsys.readouterr().err
    assert error.startswith("cycada: error: seeds 0, 1 failed (seed 0: ")
    assert error.count("cycada: error:") == 1 and "made with a different config" in error
    summary = json.loads((out / "results.json").read_text())
    assert summary["finished"] == [] and summary["rows"] == []
    assert "Not finished: seed 0, 1" in (out / "results.md").read_text()


def test_seed_options_name_what_is_wrong(tmp_path, capsys):
    out = str(tmp_path / "x")
    assert main(["ablate", "digits", "--seeds", "0-4", "--seed", "1", "--out", out]) == 2
    assert "--seed and --seeds: give one" in capsys.readouterr().err
    assert main(["ablate", "digits", "--seeds", "4-2", "--out", out]) == 2
    assert "--seeds '4-2': expected seeds like 0-4" in capsys.readouterr().err
    assert main(["ablate", "digits", "--jobs", "2", "--out", out]) == 2
    assert "--jobs 2: runs seeds at once, and needs --seeds" in capsys.readouterr().err
    assert main(["ablate", "digits", "--seeds", "0-1", "--jobs", "0", "--out", out]) == 2
    assert "--jobs 0: expected at least 1" in capsys.readouterr().err
    assert main(["ablate", "digits", "--seeds", "0", "--rows", "fulll", "--out", out]) == 2
    assert "unknown ablation row 'fulll'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing written for a command that cannot run
    # a folder keeps one kind of table: neither command overwrites the other's
    one_seed, over_seeds = tmp_path / "one", tmp_path / "many"
    for folder, table in ((one_seed, {"rows": []}), (over_seeds, {"seeds": [0], "rows": []})):
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps(table))
    assert main(["ablate", "digits", "--seeds", "0-1", "--out", str(one_seed)]) == 2
    assert f"{one_seed} holds a one-seed ablation; with --seeds use a new --out" in (
        capsys.readouterr().err
    )
    assert main(["ablate", "digits", "--out", str(over_seeds)]) == 2
    assert f"{over_seeds} holds an ablation over seeds; without --seeds" in capsys.readouterr().err
    assert main(["ablate", "seg", "--out", str(over_seeds)]) == 2
    assert "holds an ablation over seeds" in capsys.readouterr().err
    assert json.loads((one_seed / "results.json").read_text()) == {"rows": []}
