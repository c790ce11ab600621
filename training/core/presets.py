"""The preset YAML files of both tasks and the default data folder of the commands."""

from __future__ import annotations

import os
from pathlib import Path

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"
# where `cycada train/ablate/data` look for data sets unless --data-root says otherwise
DEFAULT_DATA_ROOT = os.environ.get("CYCADA_DATA", "../shared/data")


def preset_names(task: str) -> list[str]:
    """The presets of ``task`` ("digits" or "seg"): ``PRESET_DIR/<task>-<name>.yaml``."""
    return sorted(p.stem.split("-", 1)[1] for p in PRESET_DIR.glob(f"{task}-*.yaml"))
