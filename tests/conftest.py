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


def write_tiny_domains(root: Path, count: int = 6, width: int = 128, height: int = 64) -> Path:
    """A game-style labelled source (GTA5 layout) and a camera-style target (Cityscapes layout:
    unlabelled train, labelled val) under ``root``: the data of the tiny end-to-end runs."""
    from cycada.training.data.scene_writer import write_scene_dataset

    write_scene_dataset(root / "gta5", count, "game", "gta5", width, height)
    write_scene_dataset(
        root / "cityscapes", count, "camera", "cityscapes", width, height, labels=False
    )
    write_scene_dataset(
        root / "cityscapes", 3, "camera", "cityscapes", width, height, split="val", seed=1
    )
    return root


def skip_without_tritonserver() -> None:
    """Skip the calling test module (with the reason) when tritonserver is not installed."""
    from cycada.serving.server_install import find_tritonserver

    if find_tritonserver() is None:
        pytest.skip(
            "tritonserver is not installed (run `python -m cycada.serving.server_install`)",
            allow_module_level=True,
        )
