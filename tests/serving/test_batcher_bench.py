"""`cycada bench batcher`: the exported batcher settings against variants, each variant served
by its own real tritonserver (the 500 ms stall it measures is in BENCHMARKS.md, not asserted)."""

from __future__ import annotations

import json

import pytest

from cycada.benchmarks.batcher import parse_variants, variant_config
from cycada.cli import main
from cycada.errors import ConfigError

EXPORTED = (
    "dynamic_batching { max_queue_delay_microseconds: 0 default_queue_policy "
    "{ max_queue_size: 128 } }\ninstance_group [ { kind: KIND_CPU count: 2 } ]\n"
)


def test_a_variant_replaces_only_what_it_names():
    assert variant_config(EXPORTED, None, None) == EXPORTED
    text = variant_config(EXPORTED, 1, 2000)
    assert "count: 1 }" in text and "max_queue_delay_microseconds: 2000 " in text
    assert "max_queue_size: 128" in text


def test_a_malformed_variant_is_a_one_line_error():
    assert parse_variants("a=-:-,b=1:0") == {"a": (None, None), "b": (1, 0)}
    with pytest.raises(ConfigError, match="'b=one:0' is not NAME=INSTANCES:DELAY_US"):
        parse_variants("a=-:-,b=one:0")
    with pytest.raises(ConfigError, match="at least 1 instance"):
        parse_variants("a=0:0")


@pytest.mark.slow
@pytest.mark.server
def test_bench_serves_each_variant_and_reports_its_latency_tail(tmp_path, exported_repository):
    argv = ["bench", "batcher", "--repository", str(exported_repository), "--out", str(tmp_path)]
    argv += ["--variants", "exported=-:-,one-instance=1:2000", "--concurrency", "2"]
    assert main([*argv, "--seconds", "1.5", "--size", "64x32"]) == 0
    result = json.loads((tmp_path / "batcher.json").read_text())
    assert result["variants"] == {"exported": [None, None], "one-instance": [1, 2000]}
    rows = result["rows"]
    assert [row["variant"] for row in rows] == ["exported", "one-instance"]
    for row in rows:
        assert row["errors"] == 0 and row["requests"] > 0 and row["concurrency"] == 2
        assert row["p50_ms"] <= row["p99_ms"] <= row["max_ms"] and row["stalls"] >= 0
    assert "| 2 | one-instance |" in (tmp_path / "batcher.md").read_text()
