"""Image sizes on the command line: always WIDTHxHEIGHT (as video tools write them, 1280x720)."""

from __future__ import annotations

import argparse

# the width segment-video scales frames to unless told (--width): the export times the CPU
# engines of a segmentation at it, as the speed that decides is the one clients meet
VIDEO_WIDTH = 512


def image_size(text: str) -> tuple[int, int]:
    """argparse type of every ``--size``: 'WIDTHxHEIGHT' → (width, height), both > 0."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a size: expected WIDTHxHEIGHT, e.g. 1024x512"
        ) from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"'{text}': width and height must be > 0")
    return width, height
