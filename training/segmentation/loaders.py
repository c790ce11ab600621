"""Training data of a segmentation stage: random crops (capped at the image size) and an
endless stream of shuffled, transformed batches."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Sampler

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
        self._order: _PassOrder | None = None
        self._batches: Iterator[dict[str, torch.Tensor]] | None = None
        self._ready: dict[str, torch.Tensor] | None = None  # a batch fetched by resume_at
        # resumed right at the end of a pass whose last draw the stopped run had not yet made
        self._tail_owed = False

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        while self._ready is None:
            if self._batches is None:
                if self._tail_owed:
                    torch.randperm(len(self.dataset), generator=self.generator)
                    self._tail_owed = False
                self._start_pass(skip=0, tail_drawn=False)
            try:
                self._ready = next(self._batches)
            except StopIteration:
                self._batches = None
                self.epoch += 1
        batch, self._ready = self._ready, None
        self.taken += 1
        return batch

    def place(self) -> dict[str, object]:
        """Where the stream stands, for a resume state (after at least one batch)."""
        if self._order is None:
            raise RuntimeError("a stream has no place before its first batch")
        return {
            "epoch": self.epoch,
            "taken": self.taken,
            "generator": self._epoch_state,
            "tail_drawn": self._order.tail_drawn,
        }

    def resume_at(self, place: dict[str, object]) -> None:
        """Continue from ``place``: the same pass, order and crops, less the batches taken.

        The pass's random draws are made here, from the state recorded before them (its first
        batch is fetched now); the caller then returns the generator to the resume state's, so
        streams and other users sharing it draw on from where the stopped run left it.
        """
        self.generator.set_state(place["generator"])
        self.epoch = int(place["epoch"])
        self._start_pass(skip=int(place["taken"]), tail_drawn=bool(place["tail_drawn"]))
        try:
            self._ready = next(self._batches)
        except StopIteration:  # stopped right at the end of a pass
            self._batches = None
            self.epoch += 1
            self._tail_owed = not place["tail_drawn"]

    def _start_pass(self, skip: int, tail_drawn: bool) -> None:
        self._epoch_state = self.generator.get_state()
        self.dataset.epoch = self.epoch
        self._order = _PassOrder(
            len(self.dataset), self.generator, skip * self.batch_size, tail_drawn
        )
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=self._order,
            drop_last=True,
            generator=self.generator,
            num_workers=self.workers,
            pin_memory=self.pin_memory,
        )
        self._batches, self.taken = iter(loader), skip


def stream_places(streams: dict[str, EndlessBatches]) -> dict[str, dict[str, object]]:
    """Every stream's place, for a stage's resume state (``resume_streams`` reads it back)."""
    return {name: stream.place() for name, stream in streams.items()}


def resume_streams(
    generator: torch.Generator, streams: dict[str, EndlessBatches], places: dict | None
) -> None:
    """Put each stream back at its recorded place, then ``generator`` back at the resume
    state's (restored before this call): where the stopped run's next draw came from."""
    if not places:
        return  # an older resume state: the streams start new passes
    now = generator.get_state()
    for name, stream in streams.items():
        stream.resume_at(places[name])
    generator.set_state(now)


class _PassOrder(Sampler[int]):
    """One pass's shuffled indices, drawn as ``RandomSampler`` draws them (a permutation, then a
    second one for its empty remainder when the pass runs out), less the first ``skip`` indices.

    ``tail_drawn``: that second draw was already made before a resume state was saved (a loader
    with workers fetches ahead), so the resumed pass must not make it again.
    """

    def __init__(self, count: int, generator: torch.Generator, skip: int, tail_drawn: bool):
        self.count, self.generator, self.skip, self.tail_drawn = count, generator, skip, tail_drawn

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.count, generator=self.generator).tolist()
        yield from order[self.skip :]
        if not self.tail_drawn:
            torch.randperm(self.count, generator=self.generator)
            self.tail_drawn = True

    def __len__(self) -> int:
        return self.count - self.skip
