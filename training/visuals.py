"""PNG figures: confusion matrices and image grids (source / translated / reconstructed)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from cycada.atomic import write_atomic
from cycada.training.data.transforms import to_uint8


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
    """A row-normalised confusion matrix with counts, rows = truth, columns = prediction."""
    k = len(class_names)
    cell, margin, top = 44, 60, 50
    size_w, size_h = margin + cell * k + 10, top + margin + cell * k
    canvas = np.full((size_h, size_w, 3), 255, np.uint8)
    rows = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(canvas, title, (10, 22), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, "predicted", (margin + cell * k // 2 - 35, 44), font, 0.45, (0, 0, 0), 1)
    for i in range(k):
        for j in range(k):
            shade = int(255 * (1 - rows[i, j]))
            x0, y0 = margin + j * cell, top + margin // 2 + i * cell
            cv2.rectangle(canvas, (x0, y0), (x0 + cell - 1, y0 + cell - 1), (255, shade, shade), -1)
            colour = (255, 255, 255) if rows[i, j] > 0.5 else (0, 0, 0)
            text = str(int(confusion[i, j]))
            cv2.putText(
                canvas, text, (x0 + 3, y0 + cell // 2 + 4), font, 0.35, colour, 1, cv2.LINE_AA
            )
        label = class_names[i][:5]
        cv2.putText(
            canvas,
            label,
            (8, top + margin // 2 + i * cell + cell // 2 + 4),
            font,
            0.4,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
        cv2.putText(
            canvas,
            label,
            (margin + i * cell + 4, top + margin // 2 - 4),
            font,
            0.4,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return write_png(path, canvas[..., ::-1].copy())


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
