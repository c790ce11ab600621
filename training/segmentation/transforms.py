"""Joint image/label transforms of the paper (A.1.2): resize to a width keeping the aspect ratio,
random crop, horizontal flip. Images are resized with area/linear filtering, labels with nearest
so no new label ids appear."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cycada.training.segmentation.label_spaces import IGNORE


def resize_to_width(image: np.ndarray, label: np.ndarray | None, width: int):
    height, old_width = image.shape[:2]
    if width <= 0 or width == old_width:
        return image, label
    new_height = max(1, round(height * width / old_width))
    interpolation = cv2.INTER_AREA if width < old_width else cv2.INTER_LINEAR
    image = cv2.resize(image, (width, new_height), interpolation=interpolation)
    if label is not None:
        label = cv2.resize(label, (width, new_height), interpolation=cv2.INTER_NEAREST)
    return image, label


@dataclass(frozen=True)
class SegTransform:
    """``resize_width`` 0 keeps the size; ``crop`` (h, w) of 0 means no crop."""

    resize_width: int = 1024
    crop_height: int = 0
    crop_width: int = 0
    flip: bool = False

    def __call__(self, image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator):
        image, label = resize_to_width(image, label, self.resize_width)
        if self.crop_height and self.crop_width:
            image, label = self._crop(image, label, rng)
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
            label = None if label is None else label[:, ::-1]
        image = np.ascontiguousarray(image)
        return image, None if label is None else np.ascontiguousarray(label)

    def _crop(self, image, label, rng):
        ch, cw = self.crop_height, self.crop_width
        h, w = image.shape[:2]
        if h < ch or w < cw:  # pad (image with 0, label with ignore) so the crop fits
            pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
            image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=0)
            if label is not None:
                label = cv2.copyMakeBorder(
                    label, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=IGNORE
                )
            h, w = image.shape[:2]
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        image = image[top : top + ch, left : left + cw]
        label = None if label is None else label[top : top + ch, left : left + cw]
        return image, label
