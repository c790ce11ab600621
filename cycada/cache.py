"""Where cycada keeps what it can make again: ``$CYCADA_CACHE_DIR`` (default ``~/.cache/cycada``)
holds exported ONNX graphs (``onnx/``) and the code and packages models carry (``runtime/``)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path | None:
    """The cache folder, or None when caching is off (``CYCADA_CACHE_DIR=off``)."""
    root = os.environ.get("CYCADA_CACHE_DIR", "")
    if root.lower() in ("off", "0", "none"):
        return None
    return Path(root) if root else Path.home() / ".cache" / "cycada"
