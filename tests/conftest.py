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
