"""Request checks, grouping and decoding for the Python-backend models (no Triton imports here).

One ``execute`` call gets every request the dynamic batcher collected. Each request is checked on
its own (a bad one gets its own error, the rest are served); valid ones with the same image size
are stacked and run as one batch, and the results are split back per request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_PIXELS = 4096 * 4096  # per image: larger requests are refused, not run


@dataclass
class Checked:
    """A request's images (N, H, W, C) or the one-line reason it was refused."""

    images: Any  # numpy array, or a torch tensor decoded on the GPU; None when refused
    error: str | None = None


def check_images(array: np.ndarray | None, channels: int, max_pixels: int = MAX_PIXELS) -> Checked:
    """Validate one request's uint8 NHWC batch."""
    if array is None:
        return Checked(None, "request has no 'images' input")
    if array.dtype != np.uint8:
        return Checked(None, f"'images' must be UINT8, got {array.dtype}")
    if array.ndim != 4:
        return Checked(
            None, f"'images' must be (batch, height, width, {channels}), got rank {array.ndim}"
        )
    batch, height, width, got_channels = array.shape
    if got_channels != channels:
        return Checked(None, f"'images' must have {channels} channels, got {got_channels}")
    if batch == 0 or height == 0 or width == 0:
        return Checked(None, f"'images' is empty (shape {list(array.shape)})")
    if height * width > max_pixels:
        return Checked(
            None, f"'images' is {height}x{width}, larger than the limit of {max_pixels} pixels"
        )
    return Checked(array)


def decode_frames(
    frames: np.ndarray | None, max_pixels: int = MAX_PIXELS, decoder: Any = None
) -> Checked:
    """Encoded frames, uint8 (batch, bytes): one JPEG/PNG file per row (a request of one frame
    is (1, n)) → RGB uint8 (batch, H, W, 3); frames of one request must decode to one size.

    Bytes travel as UINT8, not BYTES: the Python-backend stub misreads BYTES tensors under
    numpy 2. ``decoder`` (``decode(row)``, ``stack(list)``) defaults to OpenCV on the CPU.
    """
    if decoder is None:
        from cycada.serving.engines import FrameDecoder

        decoder = FrameDecoder()
    if frames is None or frames.size == 0:
        return Checked(None, "request has no 'frames' input (JPEG or PNG bytes as UINT8)")
    if frames.dtype != np.uint8 or frames.ndim != 2:
        return Checked(
            None, f"'frames' must be UINT8 (batch, bytes), got {frames.dtype} {frames.shape}"
        )
    decoded = []
    for index, data in enumerate(frames):
        image = decoder.decode(data)
        if image is None:
            return Checked(
                None, f"frame {index} is not a decodable JPEG or PNG ({len(data)} bytes)"
            )
        height, width = int(image.shape[0]), int(image.shape[1])
        if height * width > max_pixels:
            return Checked(None, f"frame {index} is {height}x{width}, over the pixel limit")
        decoded.append(image)
    if len({tuple(image.shape) for image in decoded}) > 1:
        return Checked(None, "frames of one request must share one size")
    return Checked(decoder.stack(decoded))


def run_grouped(
    checked: Sequence[Checked],
    run: Callable[[np.ndarray], Sequence[np.ndarray]],
    max_batch: int,
) -> list[list[np.ndarray] | str]:
    """Run valid requests stacked by image size (chunks of ``max_batch`` images).

    Returns, per request, its outputs (split back to its own batch) or its error message.
    """
    results: list[list[np.ndarray] | str] = [c.error or "" for c in checked]
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, item in enumerate(checked):
        if item.images is not None:
            groups.setdefault(item.images.shape[1:], []).append(index)
    for indices in groups.values():
        chunk: list[int] = []
        count = 0
        for index in [*indices, None]:
            size = checked[index].images.shape[0] if index is not None else 0
            if chunk and (index is None or count + size > max_batch):
                _run_chunk(checked, chunk, run, results)
                chunk, count = [], 0
            if index is not None:
                chunk.append(index)
                count += size
    return results


def _concatenate(arrays: list) -> Any:
    if len(arrays) == 1:
        return arrays[0]
    if isinstance(arrays[0], np.ndarray):
        return np.concatenate(arrays)
    import torch  # frames decoded on the GPU

    return torch.cat(arrays)


def _run_chunk(checked, chunk, run, results) -> None:
    batch = _concatenate([checked[i].images for i in chunk])
    try:
        outputs = run(batch)
    except Exception as exc:  # an inference failure fails these requests, not the server
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        for index in chunk:
            results[index] = f"inference failed: {first}"
        return
    start = 0
    for index in chunk:
        size = checked[index].images.shape[0]
        results[index] = [output[start : start + size] for output in outputs]
        start += size
