"""Training data of a segmentation stage: random crops (capped at the image size) and an
endless stream of shuffled, transformed batches."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler

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
) -> EndlessBatches:
    """Shuffled transformed batches forever (a new random crop/flip of each image per pass)."""
    return EndlessBatches(
        dataset.with_transform(transform, seed=run.config.seed),
        batch_size,
        generator,
        workers=run.config.data.workers,
        pin_memory=run.cuda,
    )


class EndlessBatches:
    """Shuffled batches forever, one pass after another, whose place a resume state can record.

    The place is the pass (which also seeds each image's crop and flip), the batches taken from
    it, and the shuffling generator's state just before the pass drew its order. Restoring it
    rebuilds the same pass and skips the batches taken, at the sampler (no image is loaded), so
    a stage that resumes draws the batches the uninterrupted run would have drawn.
    """

    def __init__(
        self,
        dataset: SegmentationSet,
        batch_size: int,
        generator: torch.Generator,
        workers: int = 0,
        pin_memory: bool = False,
    ):
        self.dataset, self.generator = dataset, generator
        self.batch_size = min(batch_size, len(dataset))
        self.workers, self.pin_memory = workers, pin_memory
        self.epoch, self.taken = 0, 0
        self._epoch_state: torch.Tensor | None = None
        self._batches: Iterator[dict[str, torch.Tensor]] | None = None

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        while True:
            if self._batches is None:
                self._start_pass(skip=0)
            try:
                batch = next(self._batches)
            except StopIteration:
                self._batches = None
                self.epoch += 1
                continue
            self.taken += 1
            return batch

    def place(self) -> dict[str, object]:
        """Where the stream stands, for a resume state (after at least one batch)."""
        return {"epoch": self.epoch, "taken": self.taken, "generator": self._epoch_state}

    def resume_at(self, place: dict[str, object]) -> None:
        """Continue from ``place``: the same pass, order and crops, less the batches taken."""
        self.epoch = int(place["epoch"])
        self.generator.set_state(place["generator"])
        self._start_pass(skip=int(place["taken"]))

    def _start_pass(self, skip: int) -> None:
        self._epoch_state = self.generator.get_state()
        self.dataset.epoch = self.epoch
        # what DataLoader(shuffle=True, generator=...) builds, so the draws are the same
        sampler: Sampler[int] = RandomSampler(self.dataset, generator=self.generator)
        if skip:
            sampler = _SkipFirst(sampler, skip * self.batch_size)
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            generator=self.generator,
            num_workers=self.workers,
            pin_memory=self.pin_memory,
        )
        self._batches, self.taken = iter(loader), skip


class _SkipFirst(Sampler[int]):
    """Another sampler's indices less the first ``count`` (its random draws unchanged)."""

    def __init__(self, inner: Sampler[int], count: int):
        self.inner, self.count = inner, count

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.inner), self.count, None)

    def __len__(self) -> int:
        return max(len(self.inner) - self.count, 0)  # type: ignore[arg-type]
