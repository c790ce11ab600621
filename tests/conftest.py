"""Shared fixtures; the helpers they use live in ``tests/helpers.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import data_path


@pytest.fixture
def data_root() -> Path:
    return data_path()
