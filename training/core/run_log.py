"""What a run shows and records while it trains: progress bars, TensorBoard scalars, messages."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from cycada.errors import ConfigError

LOGGER = logging.getLogger("cycada.training")


LOCK_FILE = ".run.lock"
# folders this process holds, with how many of its runs use each: runs one after another in
# one process (a resumed stage, an ablation's rows, a test) share the lock; other processes
# are refused
_HELD: dict[Path, list] = {}


class RunFolderLock:
    """An OS lock on a run folder held while this process trains into it: a second training
    into the same folder is refused in one line instead of overwriting the first one's files.
    The kernel drops the lock with the process, so a run killed with -9 leaves none behind."""

    def __init__(self, out_dir: Path):
        self.key = out_dir.resolve()
        held = _HELD.get(self.key)
        if held is not None:
            held[1] += 1
            return
        handle = open(out_dir / LOCK_FILE, "a+")  # noqa: SIM115 (the lock is the open handle)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ConfigError(
                f"--out {out_dir}: another training is writing into it (pid {holder}); wait "
                "for it to finish, or choose another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        _HELD[self.key] = [handle, 1]

    def release(self) -> None:
        held = _HELD.get(self.key)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            held[0].close()  # closing the handle drops the lock
            del _HELD[self.key]


class RunLog:
    """Progress bars (rate and ETA) on stderr; scalars to TensorBoard under ``OUT/tensorboard``
    and, one JSON object a line, to ``OUT/scalars.jsonl`` (read by tests and by the curves
    plot without TensorBoard)."""

    def __init__(self, out_dir: Path, quiet: bool = False, write: bool = True):
        self.out_dir = out_dir
        self.quiet = quiet
        self.write = write  # False on data-parallel ranks other than 0
        self.lock = RunFolderLock(out_dir) if write else None  # the writer owns the folder
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
        if self.lock is not None:
            self.lock.release()
            self.lock = None
