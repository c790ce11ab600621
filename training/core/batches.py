"""Shuffled mini-batch indices from a seeded generator (in-memory digit tensors need no workers)."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def epoch_batches(
    count: int, batch_size: int, generator: torch.Generator, drop_last: bool = True
) -> list[torch.Tensor]:
    """One shuffled pass over ``count`` samples as index tensors."""
    order = torch.randperm(count, generator=generator)
    stop = count - count % batch_size if drop_last and count >= batch_size else count
    return [order[i : i + batch_size] for i in range(0, stop, batch_size)]


class EndlessBatches:
    """Index batches forever, reshuffling after each pass (for pairing two domains)."""

    def __init__(self, count: int, batch_size: int, generator: torch.Generator):
        self.count, self.batch_size, self.generator = count, min(batch_size, count), generator
        self._pending: list[torch.Tensor] = []

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        if not self._pending:
            self._pending = epoch_batches(self.count, self.batch_size, self.generator)
        return self._pending.pop(0)
