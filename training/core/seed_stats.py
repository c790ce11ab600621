"""Ablation rows over several seeds: each row's mean and spread, and paired differences with a
95 % confidence interval, so that a gap between two rows is called a gain only when it is
larger than the seed-to-seed noise.

The differences are paired: seed ``s`` of row A against seed ``s`` of row B, which share every
stage the two rows have in common (the same f_S, the same pixel stage), so the noise those
stages add cancels. The interval is Student's t on the per-seed differences (n - 1 degrees of
freedom); with one seed there is no interval and no verdict.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass

from cycada.errors import ConfigError

ABOVE, BELOW, NOISE, ONE_SEED = "above", "below", "within the noise", "one seed: no interval"


def parse_seeds(text: str) -> list[int]:
    """``"0-4"``, ``"0,2,5"`` or ``"0-2,7"`` → sorted distinct seeds."""
    seeds: set[int] = set()
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match or (match[2] is not None and int(match[2]) < int(match[1])):
            raise ConfigError(
                f"--seeds '{text}': expected seeds like 0-4, 0,1,2 or 0-2,7 (non-negative, "
                "ranges low-high)"
            )
        low = int(match[1])
        seeds.update(range(low, int(match[2] if match[2] is not None else low) + 1))
    return sorted(seeds)


@dataclass(frozen=True)
class SeedValues:
    """A value per seed (a row's metric, or the gap between two rows)."""

    per_seed: dict[int, float]

    @property
    def n(self) -> int:
        return len(self.per_seed)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.per_seed.values())

    @property
    def sd(self) -> float | None:
        """Sample standard deviation (None below two seeds)."""
        return statistics.stdev(self.per_seed.values()) if self.n > 1 else None


@dataclass(frozen=True)
class RowStats(SeedValues):
    """One row's metric on every seed that finished it."""

    row: str


@dataclass(frozen=True)
class PairedDifference(SeedValues):
    """Row ``first`` minus row ``second``, seed by seed, on the seeds that finished both."""

    first: str
    second: str
    confidence: float = 0.95

    @property
    def interval(self) -> tuple[float, float] | None:
        """The two-sided t interval of the mean difference (None below two seeds)."""
        if self.n < 2:
            return None
        # scipy: only for an interval (the command line imports this module)
        from scipy.stats import t

        half = float(t.ppf(0.5 + self.confidence / 2, self.n - 1)) * self.sd / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    @property
    def seeds_above(self) -> int:
        return sum(value > 0 for value in self.per_seed.values())

    @property
    def verdict(self) -> str:
        interval = self.interval
        if interval is None:
            return ONE_SEED
        low, high = interval
        return ABOVE if low > 0 else BELOW if high < 0 else NOISE


def row_stats(per_seed: dict[int, dict[str, float]], rows: list[str]) -> list[RowStats]:
    """``per_seed``: seed → row → metric. One entry per row in ``rows`` order; a row no seed
    finished is left out."""
    found = [
        RowStats(
            per_seed={seed: values[row] for seed, values in per_seed.items() if row in values},
            row=row,
        )
        for row in rows
    ]
    return [stats for stats in found if stats.n]


def paired_difference(
    per_seed: dict[int, dict[str, float]], first: str, second: str
) -> PairedDifference | None:
    """``first`` − ``second`` on the seeds that have both (None when no seed has both)."""
    both = {
        seed: values[first] - values[second]
        for seed, values in per_seed.items()
        if first in values and second in values
    }
    return PairedDifference(per_seed=both, first=first, second=second) if both else None
