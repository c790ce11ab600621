"""Atomic file writes: a reader sees either the old file or the complete new one, never a part.

Every artifact the project writes (checkpoints, metrics, configs, images) goes through here so an
interrupted or failed run never damages the last good file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cycada.errors import ConfigError


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ordinary_mode(directory: bool = False) -> int:
    """The mode a plain ``open`` or ``mkdir`` would give (0644 / 0755 under the usual umask).
    Temporary files and folders are created 0600 / 0700; what is published (a checkpoint, a
    model version a server running as another user reads) gets this mode before its rename."""
    return (0o777 if directory else 0o666) & ~_umask()


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a written file to the disk through a read-only handle: the file may be read-only
    (a copied 0444 label), and fsync needs no write access."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """Make a rename or a new entry in ``path`` durable (a crash cannot undo it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it gets the umask's mode, is fsynced
    and renamed onto it, and the rename is fsynced."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.fchmod(fd, ordinary_mode())
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, target)
        fsync_directory(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def make_output_folder(folder: Path, option: str = "--out") -> Path:
    """``folder`` (given as ``option``) made when missing; one line when it is a file, or
    under one, which is left as it is."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"{option} {folder}: expected a folder, found a file") from None
    return folder


def expect_mp4(path: Path, option: str = "--out") -> Path:
    """``path`` (given as ``option``) if an MP4 can be written there: it ends in .mp4 (OpenCV
    picks the container by the suffix) and is not a folder."""
    if path.suffix.lower() != ".mp4" or path.is_dir():
        raise ConfigError(f"{option} {path}: expected a path ending in .mp4 (not a folder)")
    return path


def publish_folder(staging: Path, target: Path) -> None:
    """Rename the finished folder ``staging`` to ``target`` so that a reader (a polling server)
    sees all of it or none: every file and folder inside gets the umask's mode and is fsynced
    first, then the rename, then the parent folder. ``target`` must not exist."""
    file_mode, folder_mode = ordinary_mode(), ordinary_mode(directory=True)
    for folder, _, files in os.walk(staging):
        for name in files:
            path = os.path.join(folder, name)
            executable = os.stat(path).st_mode & 0o111  # a program stays one (0755)
            os.chmod(path, folder_mode if executable else file_mode)
            fsync_file(path)
        os.chmod(folder, folder_mode)
        fsync_directory(folder)
    os.rename(staging, target)
    fsync_directory(target.parent)


def write_atomic(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> Path:
    """Run ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write JSON keeping the insertion order of keys (stage order, class order)."""
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def remove_stale_temporaries(folder: Path, older_than_s: float = 600.0) -> int:
    """Temporary files of :func:`atomic_path` (``.NAME.<random>.tmp``) that a killed writer left
    under ``folder``: a write takes far less than ``older_than_s``, so an older one belongs to
    no living writer (another process may be writing a newer one right now). Returns how many
    were removed."""

    removed, now = 0, time.time()
    for path in Path(folder).rglob(".*.tmp") if Path(folder).is_dir() else []:
        with contextlib.suppress(OSError):
            if path.is_file() and now - path.stat().st_mtime > older_than_s:
                path.unlink()
                removed += 1
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
