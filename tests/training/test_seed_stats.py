"""Rows over several seeds: means, paired differences, their interval and verdict."""

from __future__ import annotations

import json
import os
import time

import pytest

from cycada.errors import ConfigError
from cycada.training.core.seed_runs import seed_progress
from cycada.training.core.seed_stats import (
    ABOVE,
    BELOW,
    NOISE,
    ONE_SEED,
    paired_difference,
    parse_seeds,
    row_stats,
)
from cycada.training.digits.ablation import DIGITS_TABLE

# session 15's U→M rows on all of MNIST t10k (BENCHMARKS.md), seeds 0-4
FEATURE_ONLY = [94.62, 93.95, 94.19, 95.04, 94.46]
FULL = [94.40, 93.61, 94.05, 94.78, 93.77]


def per_seed(**rows: list[float]) -> dict[int, dict[str, float]]:
    seeds = range(max(len(values) for values in rows.values()))
    return {
        seed: {row: values[seed] for row, values in rows.items() if seed < len(values)}
        for seed in seeds
    }


def test_parse_seeds_takes_ranges_and_lists():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("3") == [3]
    assert parse_seeds("0-2,7, 1") == [0, 1, 2, 7]


@pytest.mark.parametrize("text", ["", "a", "4-2", "-1", "0-", "1,,2", "0..4"])
def test_parse_seeds_names_a_malformed_list(text):
    with pytest.raises(ConfigError, match=f"--seeds '{text}': expected seeds like 0-4"):
        parse_seeds(text)


def test_a_difference_inside_the_noise_is_called_so():
    """Full against feature-only over five seeds: below on every seed, by 0.14-0.69; the t
    interval (t_0.975,4 = 2.776) is worked out by hand here."""
    difference = paired_difference(per_seed(full=FULL, no_pixel=FEATURE_ONLY), "full", "no_pixel")
    gaps = [-0.22, -0.34, -0.14, -0.26, -0.69]
    assert difference.per_seed == pytest.approx(dict(enumerate(gaps)))
    assert difference.mean == pytest.approx(-0.33)
    sd = (sum((g + 0.33) ** 2 for g in gaps) / 4) ** 0.5
    half = 2.776445 * sd / 5**0.5
    assert difference.interval == pytest.approx((-0.33 - half, -0.33 + half), abs=1e-4)
    assert difference.seeds_above == 0
    assert difference.verdict == BELOW  # every seed below: the interval stays under zero


def test_verdicts_follow_the_interval():
    rows = per_seed(a=[95.0, 93.0, 96.0], b=[94.0, 94.0, 94.0], c=[90.0, 88.5, 91.0])
    assert paired_difference(rows, "a", "b").verdict == NOISE  # +1, -1, +2: straddles zero
    assert paired_difference(rows, "a", "c").verdict == ABOVE
    assert paired_difference(rows, "c", "b").verdict == BELOW
    one = paired_difference(per_seed(a=[95.0], b=[94.0]), "a", "b")
    assert one.interval is None and one.verdict == ONE_SEED and one.mean == pytest.approx(1.0)


def test_only_seeds_that_finished_both_rows_are_paired():
    rows = per_seed(full=[95.0, 94.0, 93.0], control=[60.0, 61.0])
    difference = paired_difference(rows, "full", "control")
    assert difference.per_seed == {0: 35.0, 1: 33.0}
    assert paired_difference(rows, "full", "missing") is None
    stats = {s.row: s for s in row_stats(rows, ["control", "full", "never_ran"])}
    assert list(stats) == ["control", "full"]
    assert stats["full"].mean == pytest.approx(94.0) and stats["full"].sd == pytest.approx(1.0)
    assert stats["control"].n == 2
    assert row_stats(per_seed(a=[1.0]), ["a"])[0].sd is None


def test_full_is_compared_with_each_part_and_every_adapted_row_with_the_control():
    rows = ["source_only", "control", "no_feat", "no_pixel", "full", "target_supervised"]
    assert DIGITS_TABLE.comparisons(rows) == [
        ("no_feat", "control"),
        ("no_pixel", "control"),
        ("full", "control"),
        ("full", "no_feat"),
        ("full", "no_pixel"),
    ]
    assert DIGITS_TABLE.comparisons(["no_pixel", "full"]) == [("full", "no_pixel")]
    assert DIGITS_TABLE.comparisons(["source_only", "control"]) == []


def test_a_running_seed_reports_its_newest_row_and_last_logged_step(tmp_path):
    seed = tmp_path / "seed-3"
    rows = ["source_only", "control", "full"]
    assert seed_progress(seed, rows) == "starting"
    (seed / "source_only").mkdir(parents=True)
    assert seed_progress(seed, rows) == "row 1 of 3 (source_only)"
    records = [{"stage": "source", "step": step, "task_loss": 0.5} for step in (10, 20, 30)]
    lines = "".join(json.dumps(record) + "\n" for record in records)
    (seed / "source_only" / "scalars.jsonl").write_text(lines + '{"stage": "sou')  # half written
    assert seed_progress(seed, rows) == "row 1 of 3 (source_only), source step 30"
    control = seed / "control"
    control.mkdir()
    (control / "scalars.jsonl").write_text('{"stage": "source", "step": 1200}\n')
    os.utime(control, (time.time() + 5, time.time() + 5))  # the newest folder is the running row
    assert seed_progress(seed, rows) == "row 2 of 3 (control), source step 1200"
    # a row evaluated again writes only its log: that row is the one running
    (seed / "source_only" / "log.txt").write_text("evaluation: labelled on camvid/test\n")
    os.utime(seed / "source_only" / "log.txt", (time.time() + 10, time.time() + 10))
    assert seed_progress(seed, rows).startswith("row 1 of 3 (source_only)")
