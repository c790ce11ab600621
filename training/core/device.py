"""The torch device a run trains on, from its config's ``device`` key."""

from __future__ import annotations

import torch

from cycada.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda[:N]``; a clear error otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"config key 'device' is '{name}'; expected auto, cpu or cuda[:N]"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device' is '{name}' but no CUDA GPU is available")
    return device
