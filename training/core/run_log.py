"""What a run shows and records while it trains: progress bars, TensorBoard scalars, messages."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from tqdm import tqdm

LOGGER = logging.getLogger("cycada.training")


class RunLog:
    """Progress bars (rate and ETA) on stderr; scalars to TensorBoard under ``OUT/tensorboard``
    and, one JSON object a line, to ``OUT/scalars.jsonl`` (read by tests and by the curves
    plot without TensorBoard)."""

    def __init__(self, out_dir: Path, quiet: bool = False, write: bool = True):
        self.out_dir = out_dir
        self.quiet = quiet
        self.write = write  # False on data-parallel ranks other than 0
        self.writer = None  # created at the first scalar: a run refused for bad input writes none
        self.started = time.monotonic()

    def progress(self, total: int, description: str, initial: int = 0) -> tqdm:
        return tqdm(
            total=total,
            initial=initial,
            desc=description,
            unit="step",
            dynamic_ncols=True,
            mininterval=1.0,
            disable=self.quiet,
            file=sys.stderr,
        )

    def scalars(self, tag: str, values: dict[str, float], step: int) -> None:
        if not self.write:
            return
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter  # slow import; only when needed

            self.writer = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))
        for key, value in values.items():
            self.writer.add_scalar(f"{tag}/{key}", value, step)
        record = {"stage": tag, "step": step, **{k: float(v) for k, v in values.items()}}
        with open(self.out_dir / "scalars.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def info(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        line = f"[{elapsed:7.1f}s] {message}"
        if not self.quiet:
            LOGGER.info(line)
        if not self.write:
            return
        with open(self.out_dir / "log.txt", "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
