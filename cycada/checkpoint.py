"""Checkpoints: safetensors weights with the resolved config inside, written atomically.

Stage checkpoints (the artifacts export and serving read) are safetensors files: loading them
never executes pickled code. Their metadata holds the resolved run config (JSON) and a small
``meta`` record (stage, networks, fingerprint). Resume states (optimizer moments, RNG states,
loop counters) are ``torch.save`` files loaded with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from cycada.atomic import write_atomic
from cycada.errors import CheckpointError

FORMAT = "cycada-checkpoint-1"


def save_modules(
    path: str | os.PathLike[str],
    modules: dict[str, nn.Module],
    config: dict[str, Any],
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write the state dicts of ``modules`` (keyed ``<module>.<param>``) to ``path`` atomically."""
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().cpu().contiguous().clone()
    metadata = {
        "format": FORMAT,
        "modules": json.dumps(sorted(modules)),
        "config": json.dumps(config, sort_keys=True),
        "meta": json.dumps(meta or {}, sort_keys=True),
    }
    try:
        return write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    except OSError as exc:  # a full disk: the previous checkpoint (if any) is untouched
        raise CheckpointError(
            f"cannot write checkpoint {path}: {exc}; the previous file is kept"
        ) from None


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (config, meta) stored in a checkpoint, without reading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({exc})") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cycada checkpoint (no '{FORMAT}' header)")
    return json.loads(metadata["config"]), json.loads(metadata["meta"])


def load_modules(
    path: str | os.PathLike[str], modules: dict[str, nn.Module], strict: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load weights into ``modules`` (by name); returns the stored (config, meta)."""
    config, meta = read_header(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({exc})") from None
    for name, module in modules.items():
        prefix = f"{name}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not state:
            stored = sorted({k.split(".", 1)[0] for k in tensors})
            raise CheckpointError(
                f"checkpoint {path} has no network '{name}' (it holds: {', '.join(stored)})"
            )
        try:
            module.load_state_dict(state, strict=strict)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(f"checkpoint {path}: '{name}' does not match ({first})") from None
    return config, meta


def save_state(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write a resume state (tensors, numbers, strings, nested dicts/lists) atomically."""
    return write_atomic(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a resume state without executing pickled code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"resume state {path} does not exist") from None
    except Exception as exc:  # torch raises several types for damaged archives
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"resume state {path} is truncated or corrupt ({first})") from None
