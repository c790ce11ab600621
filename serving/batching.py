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

from cycada.serving.engines import FrameDecoder

MAX_PIXELS = 4096 * 4096  # per image: larger requests are refused, not run
MAX_REQUEST_PIXELS = 4 * MAX_PIXELS  # per request (batch x height x width)
# per batch the engine runs (the export sets it from its largest size: 8 x 1024x2048)
MAX_BATCH_PIXELS = MAX_PIXELS
# bytes of one encoded frame's row (a 4096x4096 JPEG at quality 95 is about 8 MB); longer rows
# are refused before any per-byte work
MAX_FRAME_BYTES = 24 * 1024 * 1024
HEADER_SCAN_BYTES = 1024 * 1024  # a JPEG's frame header lies within its first segments


@dataclass(frozen=True)
class Failure:
    """Why a request got no outputs: its own bad input (INVALID_ARGUMENT, never worth a retry)
    or a fault of the server (INTERNAL)."""

    message: str
    bad_input: bool = True


@dataclass
class Checked:
    """A request's images (N, H, W, C) or the one-line reason it was refused."""

    images: Any  # numpy array, or a torch tensor decoded on the GPU; None when refused
    error: str | None = None
    bad_input: bool = True  # False when the refusal is the server's fault (decoder out of memory)

    @property
    def failure(self) -> Failure | None:
        return None if self.error is None else Failure(self.error, self.bad_input)


def check_images(
    array: np.ndarray | None,
    channels: int,
    max_pixels: int = MAX_PIXELS,
    max_request_pixels: int = MAX_REQUEST_PIXELS,
) -> Checked:
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
    if batch * height * width > max_request_pixels:
        return Checked(
            None,
            f"'images' holds {batch}x{height}x{width} pixels, over the request limit of "
            f"{max_request_pixels}",
        )
    return Checked(array)


# --- encoded frames: size and completeness from the bytes, before any decoding ---------------
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"
JPEG_FRAME_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def encoded_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a PNG's IHDR or a JPEG's frame header; None when neither is found.

    Read before decoding so a small file that would decode to gigabytes (a decompression
    bomb) is refused without being decoded.
    """
    if data[:8] == PNG_SIGNATURE and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")
    if data[:2] != b"\xff\xd8":
        return None
    position = 2
    end = min(len(data), HEADER_SCAN_BYTES)  # fill bytes cannot keep the loop going for MBs
    while position + 4 <= end:
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            position += 2
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker in JPEG_FRAME_MARKERS and position + 9 <= len(data):
            height = int.from_bytes(data[position + 5 : position + 7], "big")
            width = int.from_bytes(data[position + 7 : position + 9], "big")
            return height, width
        if marker == 0xDA or length < 2:  # scan data before any frame header
            return None
        position += 2 + length
    return None


def is_complete(data: bytes) -> bool:
    """A JPEG ends with its end-of-image marker, a PNG with its IEND chunk (trailing zero
    padding of a batch row allowed). OpenCV decodes a truncated JPEG without complaint, filling
    the missing part with grey: that would be answered as if it were the whole frame."""
    if data[:2] == b"\xff\xd8":
        return data.endswith(b"\xff\xd9")
    if data[:8] == PNG_SIGNATURE:
        return data.endswith(PNG_END)
    return True  # other formats: left to the decoder


def trimmed_length(row: np.ndarray) -> int:
    """Bytes before a row's trailing zero padding, found in one vectorised pass (numpy's
    ``trim_zeros`` walks the padding in Python: 33 s for 32 MB of zeros)."""
    nonzero = row[::-1] != 0
    last = int(nonzero.argmax())
    return 0 if not nonzero[last] else row.size - last


def decode_frames(
    frames: np.ndarray | None,
    max_pixels: int = MAX_PIXELS,
    decoder: Any = None,
    max_request_pixels: int = MAX_REQUEST_PIXELS,
    allow_truncated: bool = False,
    max_frame_bytes: int = MAX_FRAME_BYTES,
) -> Checked:
    """Encoded frames, uint8 (batch, bytes): one JPEG/PNG file per row (a request of one frame
    is (1, n); shorter files of a batch are padded with zeros) → RGB uint8 (batch, H, W, 3);
    frames of one request must decode to one size.

    Sizes are read from the headers and checked (per frame and per request) before anything is
    decoded; a truncated file is refused unless ``allow_truncated`` (model parameter
    ``allow_truncated_frames``). Bytes travel as UINT8, not BYTES: the Python-backend stub
    misreads BYTES tensors under numpy 2. ``decoder`` (``decode(row)``, ``stack(list)``)
    defaults to OpenCV on the CPU.
    """
    if decoder is None:
        decoder = FrameDecoder()
    if frames is None or frames.size == 0:
        return Checked(None, "request has no 'frames' input (JPEG or PNG bytes as UINT8)")
    if frames.dtype != np.uint8 or frames.ndim != 2:
        return Checked(
            None, f"'frames' must be UINT8 (batch, bytes), got {frames.dtype} {frames.shape}"
        )
    if frames.shape[1] > max_frame_bytes:  # before any work that grows with the bytes
        return Checked(
            None, f"frame rows of {frames.shape[1]} bytes, over the limit of {max_frame_bytes}"
        )
    rows = [row[: trimmed_length(row)] for row in frames]
    total = 0
    for index, row in enumerate(rows):
        data = row.tobytes()
        size = encoded_size(data)
        if size is None:
            return Checked(None, f"frame {index} is not a JPEG or PNG file ({len(data)} bytes)")
        height, width = size
        if height * width > max_pixels:
            return Checked(None, f"frame {index} is {height}x{width}, over the pixel limit")
        total += height * width
        if total > max_request_pixels:
            return Checked(None, f"frames hold over {max_request_pixels} pixels per request")
        if not allow_truncated and not is_complete(data):
            return Checked(None, f"frame {index} is truncated or corrupt (no end marker)")
    decoded = []
    for index, row in enumerate(rows):
        try:
            image = decoder.decode(row)
        except Exception as exc:  # the decoder's own fault (GPU out of memory, ...): INTERNAL
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return Checked(None, f"frame {index}: decoder failed: {reason}", bad_input=False)
        if image is None:
            return Checked(None, f"frame {index} is not a decodable JPEG or PNG ({len(row)} bytes)")
        decoded.append(image)
    if len({tuple(image.shape) for image in decoded}) > 1:
        return Checked(None, "frames of one request must share one size")
    return Checked(decoder.stack(decoded))


def run_grouped(
    checked: Sequence[Checked],
    run: Callable[[np.ndarray], Sequence[np.ndarray]],
    max_batch: int,
    max_batch_pixels: int = MAX_BATCH_PIXELS,
) -> list[list[np.ndarray] | Failure]:
    """Run valid requests stacked by image size, in chunks of at most ``max_batch`` images and
    ``max_batch_pixels`` pixels: the engine's memory grows with what it runs at once (float
    scores per class and pixel), and Triton's batcher joins requests that are each within
    their own limits. Requests stay whole in a chunk, so a failure stays with the requests of
    its chunk; one request over the budget alone runs in parts and its outputs are joined.

    Returns, per request, its outputs (split back to its own batch) or why it has none.
    """
    results: list[list[np.ndarray] | Failure] = [c.failure or [] for c in checked]
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, item in enumerate(checked):
        if item.images is not None:
            groups.setdefault(tuple(item.images.shape[1:]), []).append(index)
    for shape, indices in groups.items():
        per_chunk = max(1, min(max_batch, max_batch_pixels // max(1, shape[0] * shape[1])))
        chunk: list[int] = []
        count = 0
        for index in indices:
            size = checked[index].images.shape[0]
            if chunk and count + size > per_chunk:
                _run_chunk(checked, chunk, run, results)
                chunk, count = [], 0
            if size > per_chunk:
                _run_in_parts(checked[index].images, index, per_chunk, run, results)
                continue
            chunk.append(index)
            count += size
        if chunk:
            _run_chunk(checked, chunk, run, results)
    return results


def _failure(exc: Exception) -> Failure:
    """An inference failure fails the requests it ran for, not the server (INTERNAL)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return Failure(f"inference failed: {first}", bad_input=False)


def _run_in_parts(images, index: int, per_chunk: int, run, results) -> None:
    parts = []
    try:
        for start in range(0, images.shape[0], per_chunk):
            parts.append(run(images[start : start + per_chunk]))
    except Exception as exc:
        results[index] = _failure(exc)
        return
    results[index] = [_concatenate([part[k] for part in parts]) for k in range(len(parts[0]))]


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
    except Exception as exc:
        for index in chunk:
            results[index] = _failure(exc)
        return
    start = 0
    for index in chunk:
        size = checked[index].images.shape[0]
        results[index] = [output[start : start + size] for output in outputs]
        start += size
