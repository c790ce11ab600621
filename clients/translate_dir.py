"""`cycada translate-dir SRC DST`: a folder tree of synthetic images → the real style, via Triton.

Images keep their relative paths under ``DST/images``; with ``--labels DIR`` the label file of
each image (same relative path, any image extension) is copied or hard-linked to
``DST/labels``, so ``folder:DST/images:DST/labels`` is a ready training set. Finished files are
skipped on a rerun (every write is atomic), ``--shard i/n`` splits the work across machines,
and non-image files are reported and counted, never copied.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from cycada.atomic import atomic_path, remove_stale_temporaries
from cycada.clients.interrupt import DeferredInterrupt
from cycada.clients.triton_client import ModelClient, RequestRefused, ordered_map
from cycada.errors import DataError
from cycada.grpc_security import GrpcSecurity

LOGGER = logging.getLogger("cycada.clients")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class TranslateSummary:
    translated: int = 0
    skipped_done: int = 0
    failed: list[str] = field(default_factory=list)  # "path: reason" (unreadable or refused)
    non_images: list[str] = field(default_factory=list)
    labels: int = 0
    missing_labels: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        rate = self.translated / self.seconds if self.seconds else 0.0
        parts = [
            f"{self.translated} translated ({rate:.1f} images/s)",
            f"{self.skipped_done} already done",
            f"{len(self.failed)} failed (unreadable or refused by the server)",
            f"{len(self.non_images)} non-image files skipped",
        ]
        if self.labels or self.missing_labels:
            parts.append(f"{self.labels} labels, {len(self.missing_labels)} missing")
        return ", ".join(parts)


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        index, count = -1, 0
    if count < 1 or not 0 <= index < count:
        raise DataError(f"--shard '{text}': expected i/n with 0 <= i < n, like 0/4")
    return index, count


def _find_label(labels: Path, relative: Path) -> Path | None:
    for suffix in (relative.suffix, *sorted(IMAGE_SUFFIXES)):
        candidate = labels / relative.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def _place_label(source: Path, target: Path, link: bool) -> None:
    if target.exists():
        return
    with atomic_path(target) as tmp:
        tmp.unlink()
        linked = False
        if link:
            with contextlib.suppress(OSError):
                os.link(source, tmp)
                linked = True
        if not linked:
            shutil.copy2(source, tmp)


def _to_translate(
    src: Path,
    dst: Path,
    labels: Path | None,
    link_labels: bool,
    shard: tuple[int, int],
    summary: TranslateSummary,
) -> list[Path]:
    """This shard's images not yet in DST (their labels are still copied); non-image files and
    finished images are counted in ``summary``."""
    files = sorted(p for p in src.rglob("*") if p.is_file())
    index, count = shard
    work: list[Path] = []
    for position, path in enumerate(files):
        relative = path.relative_to(src)
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            summary.non_images.append(str(relative))
            continue
        if position % count != index:
            continue
        if (dst / "images" / relative).exists():
            summary.skipped_done += 1
            if labels is not None:
                _copy_label(labels, relative, dst, link_labels, summary)
            continue
        work.append(relative)
    return work


def _write_image(target: Path, rgb: np.ndarray, done: int) -> None:
    """One translated image, whole or not at all, in the format its name says."""
    target.parent.mkdir(parents=True, exist_ok=True)
    translated = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    try:
        with atomic_path(target) as tmp:
            ok, data = cv2.imencode(target.suffix.lower() or ".png", translated)
            if not ok:
                raise DataError(f"cannot encode {target}")
            tmp.write_bytes(np.asarray(data).tobytes())
    except OSError as exc:  # a full disk: every file written so far is whole
        raise DataError(
            f"cannot write {target}: {exc}; the {done} images translated so far are kept, the "
            "same command continues"
        ) from None


def translate_dir(
    src: Path,
    dst: Path,
    urls: list[str],
    model: str = "translate_s2t",
    labels: Path | None = None,
    link_labels: bool = False,
    shard: tuple[int, int] = (0, 1),
    window: int = 4,
    timeout: float = 60.0,
    progress: bool = True,
    retry_window: float = 60.0,
    security: GrpcSecurity | None = None,
    model_version: str = "",
) -> TranslateSummary:
    if not src.is_dir():
        raise DataError(f"SRC {src} is not a folder")
    if labels is not None and not labels.is_dir():
        raise DataError(f"--labels {labels} is not a folder")
    if dst.exists() and not dst.is_dir():
        raise DataError(f"DST {dst} is a file: expected a folder (made when missing)")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise DataError(f"DST {dst} must not be SRC or inside it")
    summary = TranslateSummary()
    removed = remove_stale_temporaries(dst)  # half-written files of a killed earlier run
    if removed:
        LOGGER.info(f"translate-dir: removed {removed} half-written file(s) a killed run left")
    work = _to_translate(src, dst, labels, link_labels, shard, summary)
    client = ModelClient(
        urls,
        model,
        version=model_version,
        timeout=timeout,
        retry_window=retry_window,
        security=security,
    )
    bar = None
    if progress:
        # tqdm: only when a bar is shown
        from tqdm import tqdm

        bar = tqdm(total=len(work), unit="image", desc="translate-dir", dynamic_ncols=True)
    started = time.perf_counter()

    def readable():
        for relative in work:
            image = cv2.imread(str(src / relative), cv2.IMREAD_COLOR)
            if image is None:
                summary.failed.append(f"{relative}: not a readable image")
                if bar is not None:
                    bar.update()
                continue
            yield relative, cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def translate(item) -> dict[str, np.ndarray] | RequestRefused:
        try:  # the server refusing one image (too large, ...) must not stop the others
            return client.request({"images": item[1][None]}, ["translated"])
        except RequestRefused as refused:
            return refused

    try:
        with DeferredInterrupt() as interrupt:  # Ctrl-C lands between images, never in a write
            interrupt.cancel_on_interrupt(client.cancel)
            poll = interrupt.check
            for (relative, _), result in ordered_map(readable(), translate, window, poll=poll):
                interrupt.check()
                _save(result, relative, dst, labels, link_labels, summary)
                if bar is not None:
                    bar.update()
    finally:
        summary.seconds = time.perf_counter() - started
        if bar is not None:
            bar.close()
        client.close()
    return summary


def _save(result, relative: Path, dst: Path, labels, link_labels: bool, summary) -> None:
    """One image's translation (and its label) into DST, or its refusal into the summary."""
    if isinstance(result, RequestRefused):
        summary.failed.append(f"{relative}: {result}")
        return
    _write_image(dst / "images" / relative, result["translated"][0], summary.translated)
    summary.translated += 1
    if labels is not None:
        _copy_label(labels, relative, dst, link_labels, summary)


def _copy_label(labels: Path, relative: Path, dst: Path, link: bool, summary) -> None:
    label = _find_label(labels, relative)
    if label is None:
        summary.missing_labels.append(str(relative))
        return
    _place_label(label, dst / "labels" / label.relative_to(labels), link)
    summary.labels += 1
