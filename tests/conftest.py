"""Shared fixtures; the helpers they use live in ``tests/helpers.py``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import data_path


@pytest.fixture
def data_root() -> Path:
    return data_path()


@pytest.fixture(autouse=True, scope="session")
def graph_cache(tmp_path_factory) -> Path:
    """One ONNX graph cache for the whole test session (commands started by tests inherit it):
    the first export of given weights traces, later exports of the same weights copy."""
    folder = tmp_path_factory.mktemp("graph-cache")
    os.environ["CYCADA_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def exported_repository(tmp_path_factory) -> Path:
    """One export (ONNX fp32 + fp16, parity checked) of seeded random weights: Fast-SCNN and two
    ResNet-6 generators. The modules that serve a repository copy it (`served_copy`), so the
    export runs once per test session, not once per module."""
    from cycada.benchmarks.served import random_run
    from cycada.export.exporter import ExportOptions, export_run

    run = random_run("fastscnn", tmp_path_factory.mktemp("exported_run"), generators="resnet6")
    repo = tmp_path_factory.mktemp("exported_repository")
    report = export_run(run, repo, ExportOptions(), log=lambda _: None)
    assert all(row.ok for row in report.rows)
    assert {row.variant for row in report.rows} == {"onnx-fp32", "onnx-fp16"}
    return repo
