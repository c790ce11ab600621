"""Training data of a segmentation stage: random crops (capped at the image size) and an
endless stream of shuffled, transformed batches."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader

from cycada.training.segmentation.data import SegmentationSet
from cycada.training.segmentation.transforms import SegTransform, resize_to_width

if TYPE_CHECKING:
    from cycada.training.segmentation.run import SegRun


def train_transform(
    run: SegRun, stage: str, crop: int, flip: bool, *datasets: SegmentationSet
) -> SegTransform:
    """Random ``crop`` x ``crop`` crops of the resized images; with ``data.crop_mode`` cap,
    cut down to the size of the first image of each dataset (resized), so crops are image,
    not padding."""
    data = run.config.data
    height = width = crop
    if data.crop_mode == "cap":
        for dataset in datasets:
            image, _ = dataset.load_raw(0)
            image, _ = resize_to_width(image, None, data.resize_width)
            height, width = min(height, image.shape[0]), min(width, image.shape[1])
        if (height, width) != (crop, crop):
            run.log.info(f"{stage}: crops {height}x{width} (crop {crop} capped at the images)")
    return SegTransform(data.resize_width, height, width, flip)


def endless_batches(
    run: SegRun,
    dataset: SegmentationSet,
    transform: SegTransform,
    batch_size: int,
    generator: torch.Generator,
) -> Iterator[dict[str, torch.Tensor]]:
    """Shuffled transformed batches forever (a new random crop/flip of each image per pass)."""
    dataset = dataset.with_transform(transform, seed=run.config.seed)
    batch_size = min(batch_size, len(dataset))
    epoch = 0
    while True:
        dataset.epoch = epoch
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            drop_last=True,
            generator=generator,
            num_workers=run.config.data.workers,
            pin_memory=run.cuda,
        )
        yield from loader
        epoch += 1
