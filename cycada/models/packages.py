"""Loading an AOTInductor package compiled at export (``model.pt2`` and ``compiled.json``):
the serving engine loads it in a fraction of a second when the machine matches what it was built
for, and falls back to the eager graph, saying why, when it does not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

PACKAGE = "model.pt2"
INFO = "compiled.json"


def machine_signature(device: torch.device) -> dict[str, str]:
    """What a package must match to load: device type and GPU name, torch and CUDA versions."""
    return {
        "device": device.type,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "",
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "",
    }


class PaddedPackage:
    """A loaded package for frames of any size: pads a uint8 NHWC batch (edge pixels repeated,
    as the graph itself pads) to the package's multiple and crops the outputs back; frames with
    a side under ``min_side`` go to ``fallback`` (the eager graph)."""

    def __init__(self, runner, multiple: int, min_side: int, fallback=None):
        self.runner, self.multiple, self.min_side = runner, multiple, min_side
        self.fallback = fallback

    def __call__(self, batch: torch.Tensor):
        if not self.multiple:
            return self.runner(batch)
        height, width = batch.shape[1], batch.shape[2]
        if min(height, width) < self.min_side:
            if self.fallback is None:
                raise ValueError(
                    f"frame {height}x{width}: the compiled package takes sides of at least "
                    f"{self.min_side}"
                )
            return self.fallback()(batch)
        pad_rows, pad_columns = -height % self.multiple, -width % self.multiple
        if not (pad_rows or pad_columns):
            return self.runner(batch)
        rows = torch.arange(height + pad_rows, device=batch.device).clamp_(max=height - 1)
        columns = torch.arange(width + pad_columns, device=batch.device).clamp_(max=width - 1)
        padded = batch.index_select(1, rows).index_select(2, columns)
        outputs = self.runner(padded)
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        return tuple(output[:, :height, :width].contiguous() for output in outputs)


def load_package(folder: Path, device: torch.device, half: bool, fallback=None) -> tuple[Any, str]:
    """(runner, "") when ``folder`` holds a package built for this machine and precision, else
    (None, why not): the caller falls back to the eager graph and logs the reason. ``fallback``
    returns the eager graph for frames smaller than the package takes."""
    info_path = folder / INFO
    if not (folder / PACKAGE).exists() or not info_path.exists():
        return None, "no compiled package in this version"
    built = json.loads(info_path.read_text())
    here = {**machine_signature(device), "precision": "fp16" if half else "fp32"}
    different = [f"{k} {built.get(k)!r} here {v!r}" for k, v in here.items() if built.get(k) != v]
    if different:
        return None, "compiled package built for another machine: " + "; ".join(different)
    try:
        index = (device.index or 0) if device.type == "cuda" else -1
        runner = torch._inductor.aoti_load_package(str(folder / PACKAGE), device_index=index)
        if device.type == "cuda":  # the package's convolutions go through cuDNN: tune them
            torch.backends.cudnn.benchmark = True
    except Exception as exc:  # a broken or truncated package: serve eager instead
        return None, f"compiled package does not load ({str(exc).strip().splitlines()[0]})"
    multiple, min_side = built.get("multiple", 0), built.get("min_side", 0)
    return PaddedPackage(runner, multiple, min_side, fallback), ""
