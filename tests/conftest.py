"""Shared fixtures: where the real data lives, and small helpers for writing test data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("CYCADA_DATA", REPO.parent / "shared" / "data")).resolve()


def data_path(*parts: str) -> Path:
    """A path under the real data folder; skips the test (with the reason) when it is absent."""
    path = DATA_ROOT.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data {path} is absent (set CYCADA_DATA to the shared data folder)")
    return path


@pytest.fixture
def data_root() -> Path:
    return data_path()
