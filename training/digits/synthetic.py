"""A synthetic digits domain that needs no files (like SynDigits in the adaptation literature).

Digits are drawn with OpenCV's built-in Hershey vector fonts, with random font, italics, size,
stroke width, position, rotation, shear, foreground/background colours (with a minimum
contrast), gradient backgrounds, neighbouring digits at the sides, blur and sensor noise. The
result is a 32x32 RGB house-number-like source domain for any real digit target.
"""

from __future__ import annotations

import cv2
import numpy as np

_FONTS = [
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_PLAIN,
    cv2.FONT_HERSHEY_COMPLEX_SMALL,
    cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,
]
_CANVAS = 64  # drawn at 2x and reduced, for anti-aliased strokes
_SIZE = 32


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A background and a foreground colour whose luminances differ by at least 60 levels."""
    weights = np.array([0.299, 0.587, 0.114])
    while True:
        background = rng.uniform(0, 255, 3)
        foreground = rng.uniform(0, 255, 3)
        if abs(float(weights @ background) - float(weights @ foreground)) >= 60:
            return background, foreground


def _draw_digit(canvas: np.ndarray, text: str, centre_x: float, rng, font, scale, thick, colour):
    (width, height), _ = cv2.getTextSize(text, font, scale, thick)
    origin = (int(centre_x - width / 2), int(_CANVAS / 2 + height / 2))
    cv2.putText(canvas, text, origin, font, scale, colour, thick, cv2.LINE_AA)
    return width


def render_one(digit: int, rng: np.random.Generator) -> np.ndarray:
    """Render one 32x32x3 uint8 image of ``digit``."""
    background, foreground = _colour_pair(rng)
    # linear gradient background
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction) + 1e-6
    ys, xs = np.mgrid[0:_CANVAS, 0:_CANVAS] / _CANVAS - 0.5
    ramp = (xs * direction[0] + ys * direction[1])[..., None] * rng.uniform(0, 80)
    canvas = np.clip(background + ramp, 0, 255).astype(np.uint8)
    font = int(rng.choice(_FONTS)) | (cv2.FONT_ITALIC if rng.random() < 0.25 else 0)
    base_height = cv2.getTextSize("8", font, 1.0, 1)[0][1]
    scale = rng.uniform(30, 46) / max(base_height, 1)
    thick = int(rng.integers(2, 7))
    colour = tuple(float(c) for c in foreground)
    centre = _CANVAS / 2 + rng.uniform(-4, 4)
    width = _draw_digit(canvas, str(digit), centre, rng, font, scale, thick, colour)
    gap = rng.uniform(2, 10)
    for side in (-1, 1):  # partially visible neighbours, as in house numbers
        if rng.random() < 0.6:
            neighbour = str(int(rng.integers(0, 10)))
            _draw_digit(
                canvas, neighbour, centre + side * (width + gap), rng, font, scale, thick, colour
            )
    angle = rng.uniform(-15, 15)
    shear = rng.uniform(-0.2, 0.2)
    matrix = cv2.getRotationMatrix2D((_CANVAS / 2, _CANVAS / 2), angle, rng.uniform(0.85, 1.1))
    matrix[0, 1] += shear
    matrix[1, 2] += rng.uniform(-3, 3)
    canvas = cv2.warpAffine(canvas, matrix, (_CANVAS, _CANVAS), borderMode=cv2.BORDER_REFLECT)
    sigma = rng.uniform(0.1, 1.6)
    canvas = cv2.GaussianBlur(canvas, (0, 0), sigma)
    image = cv2.resize(canvas, (_SIZE, _SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    image += rng.normal(0, rng.uniform(0, 10), image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def render_synthetic_digits(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images (N, 32, 32, 3) uint8 with balanced labels, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count, dtype=np.int64) % 10
    rng.shuffle(labels)
    images = np.empty((count, _SIZE, _SIZE, 3), np.uint8)
    for index, digit in enumerate(labels):
        images[index] = render_one(int(digit), rng)
    return images, labels
