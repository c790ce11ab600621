"""PNG images: image grids (source / translated / reconstructed) and panels; confusion matrices
(drawn by :mod:`cycada.plots`)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from cycada.atomic import write_atomic
from cycada.models.transforms import to_uint8
from cycada.plots import confusion_figure


def write_png(path: str | Path, image_rgb: np.ndarray) -> Path:
    """Write an RGB (or grey) uint8 image atomically."""
    bgr = image_rgb if image_rgb.ndim == 2 or image_rgb.shape[2] == 1 else image_rgb[..., ::-1]

    def writer(tmp: Path) -> None:
        ok, data = cv2.imencode(".png", np.ascontiguousarray(bgr))
        if not ok:
            raise OSError(f"PNG encoding failed for {path}")
        tmp.write_bytes(data.tobytes())

    return write_atomic(path, writer)


def confusion_png(
    path: str | Path, confusion: np.ndarray, class_names: list[str], title: str
) -> Path:
    """A row-normalised confusion matrix with class names and counts (matplotlib)."""

    return confusion_figure(path, confusion, class_names, title)


def image_grid(columns: list[torch.Tensor], scale: int = 2, pad: int = 2) -> np.ndarray:
    """Rows of samples, one column per tensor (N, C, H, W) in [-1, 1] (same N, H, W)."""
    images = [to_uint8(c) for c in columns]
    images = [np.repeat(i, 3, axis=3) if i.shape[3] == 1 else i for i in images]
    n, h, w, _ = images[0].shape
    grid = np.full((n * (h + pad) + pad, len(images) * (w + pad) + pad, 3), 255, np.uint8)
    for row in range(n):
        for col, block in enumerate(images):
            y, x = pad + row * (h + pad), pad + col * (w + pad)
            grid[y : y + h, x : x + w] = block[row]
    return cv2.resize(grid, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)


def panel(columns: list[np.ndarray], height: int = 256) -> np.ndarray:
    """Side-by-side RGB images scaled to one height, like the paper's Figure 5."""
    scaled = []
    for image in columns:
        width = round(image.shape[1] * height / image.shape[0])
        scaled.append(cv2.resize(image, (width, height), interpolation=cv2.INTER_NEAREST))
        scaled.append(np.full((height, 4, 3), 255, np.uint8))
    return np.concatenate(scaled[:-1], axis=1)
