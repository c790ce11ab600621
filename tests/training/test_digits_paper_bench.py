"""`cycada bench digits-paper`: both USPS/MNIST shifts side by side against the paper's Table 2,
run here on real data with a schedule of a few steps (the paper's schedule is for a GPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cycada.cli import main

TINY = [
    *("--set", "data.max_samples=64", "--set", "source.epochs=1", "--set", "pixel.max_steps=1"),
    *("--set", "pixel.batch_size=8"),
    *("--set", "target.epochs=1", "--set", "feature.max_epochs=1", "--device", "cpu"),
]


@pytest.mark.data
def test_bench_reports_each_shift_beside_the_paper_and_its_wall_time(tmp_path, data_root):
    argv = ["bench", "digits-paper", "--data-root", str(data_root), "--out", str(tmp_path)]
    code = main([*argv, "--shifts", "usps->mnist", "--rows", "source_only,full", *TINY])
    assert code == 0
    result = json.loads((tmp_path / "digits-paper.json").read_text())
    shift = result["shifts"]["usps->mnist"]
    assert shift["exit"] == 0 and 0 < shift["seconds"] <= result["wall_seconds"]
    assert [row["row"] for row in shift["rows"]] == ["source_only", "full"]
    assert all(0 <= row["target_accuracy"] <= 100 for row in shift["rows"])
    table = (tmp_path / "digits-paper.md").read_text()
    assert "| usps->mnist | CyCADA (Full) |" in table and "| 96.5 ± 0.1 |" in table  # Table 2, U→M
    # the ablation ran the paper preset, with the overrides on top
    config = (tmp_path / "usps2mnist" / "full" / "config.yaml").read_text()
    assert "lr: 1.0e-05" in config and "max_epochs: 1" in config


@pytest.mark.data
def test_bench_past_its_time_limit_stops_and_says_so(tmp_path, data_root):
    argv = ["bench", "digits-paper", "--data-root", str(data_root), "--out", str(tmp_path)]
    code = main([*argv, "--shifts", "mnist->usps", "--time-limit", "0.5", *TINY])
    assert code == 1
    shift = json.loads((tmp_path / "digits-paper.json").read_text())["shifts"]["mnist->usps"]
    assert shift["exit"] == "time limit" and shift["rows"] == []
    assert "*time limit*, see" in (tmp_path / "digits-paper.md").read_text()


def test_bench_names_an_unknown_shift(tmp_path, capsys):
    assert main(["bench", "digits-paper", "--out", str(tmp_path), "--shifts", "svhn->mnist"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("cycada: error: --shifts: unknown shift 'svhn->mnist' (valid:")


@pytest.mark.data
def test_bench_over_seeds_reports_mean_and_spread(tmp_path, data_root):
    argv = ["bench", "digits-paper", "--data-root", str(data_root), "--out", str(tmp_path)]
    code = main([*argv, "--shifts", "usps->mnist", "--rows", "full", "--seeds", "0-1", *TINY])
    assert code == 0
    (row,) = json.loads((tmp_path / "digits-paper.json").read_text())["shifts"]["usps->mnist"][
        "rows"
    ]
    per_seed = {
        seed: json.loads((tmp_path / "usps2mnist" / f"seed-{seed}" / "results.json").read_text())[
            "rows"
        ][0]["target_accuracy"]
        for seed in (0, 1)
    }
    assert row["per_seed"] == {"0": per_seed[0], "1": per_seed[1]} and row["seeds"] == 2
    assert row["target_accuracy"] == pytest.approx(sum(per_seed.values()) / 2, abs=0.006)
    assert (
        f"| {row['target_accuracy']:.2f} ± {row['sd']:.2f} (2 seeds) | 96.5 ± 0.1 |"
        in (tmp_path / "digits-paper.md").read_text()
    )


@pytest.mark.data
def test_a_time_limit_stops_every_seed(tmp_path, data_root):
    argv = ["bench", "digits-paper", "--data-root", str(data_root), "--out", str(tmp_path)]
    code = main([*argv, "--shifts", "mnist->usps", "--seeds", "0-1", "--time-limit", "3", *TINY])
    assert code == 1
    assert (tmp_path / "mnist2usps" / "seed-1.log").is_file()  # both seeds had started

    def command_line(process: Path) -> bytes:
        try:
            return (process / "cmdline").read_bytes()
        except OSError:  # it ended while being listed
            return b""

    running = [
        line
        for line in map(command_line, Path("/proc").glob("[0-9]*"))
        if str(tmp_path).encode() in line
    ]
    assert running == []  # the seeds' processes went with the ablation that started them
