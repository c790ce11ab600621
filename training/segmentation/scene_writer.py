"""Write synthetic scenes in the GTA5 or Cityscapes layouts, and clips as MP4."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from cycada.errors import DataError
from cycada.training.core.visuals import write_png
from cycada.training.segmentation.data import IMAGE_SUFFIXES
from cycada.training.segmentation.label_spaces import CITYSCAPES_ID_TO_TRAIN
from cycada.training.segmentation.scenes import render_clip_frames, render_scene

TRAIN_TO_CITYSCAPES_ID = np.full(256, 0, np.uint8)  # unlabelled (id 0) for anything else
for _label_id, _train_id in CITYSCAPES_ID_TO_TRAIN.items():
    TRAIN_TO_CITYSCAPES_ID[_train_id] = _label_id
LAYOUTS = ("gta5", "cityscapes")


def scene_paths(out: Path, layout: str, index: int, split: str, seed: int) -> tuple[Path, Path]:
    if layout == "gta5":
        return out / "images" / f"{index + 1:05d}.png", out / "labels" / f"{index + 1:05d}.png"
    if layout == "cityscapes":
        stem = f"synth_{seed:06d}_{index:06d}"
        return (
            out / "leftImg8bit" / split / "synth" / f"{stem}_leftImg8bit.png",
            out / "gtFine" / split / "synth" / f"{stem}_gtFine_labelIds.png",
        )
    raise DataError(f"unknown layout '{layout}' (valid: {', '.join(LAYOUTS)})")


def write_scene_dataset(
    out: Path,
    count: int,
    style: str,
    layout: str,
    width: int = 1024,
    height: int = 512,
    seed: int = 0,
    split: str = "train",
    labels: bool = True,
    quiet: bool = True,
) -> Path:
    """Render ``count`` scenes into ``out`` (skipping files already there; writes are atomic)."""
    for index in tqdm(range(count), desc=f"scenes ({style})", disable=quiet, unit="img"):
        image_path, label_path = scene_paths(out, layout, index, split, seed)
        if image_path.exists() and (label_path.exists() or not labels):
            continue
        # each scene's seed depends on (seed, split, index) so splits never share scenes
        split_offset = {"train": 0, "val": 500_000, "test": 700_000}.get(split, 900_000)
        scene_seed = seed * 1_000_003 + split_offset + index
        image, label = render_scene(scene_seed, width, height, style)
        if labels:
            write_png(label_path, TRAIN_TO_CITYSCAPES_ID[label])
        write_png(image_path, image)
    return out


def write_clip(
    path: Path,
    frames: int,
    width: int = 512,
    height: int = 256,
    style: str = "camera",
    fps: float = 10.0,
    seed: int = 0,
    render_scale: int = 1,
) -> Path:
    """An MP4 of a camera driving along a synthetic street (written beside, then renamed).
    ``render_scale`` > 1 renders at that fraction of the size and scales up: large frames for
    benchmarks, faster than rendering them at full size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.parent / f".{path.stem}.partial.mp4"  # OpenCV picks the container by suffix
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise DataError(f"OpenCV cannot write MP4 files here ({path})")
    small = (width // render_scale, height // render_scale)
    try:
        for image, _ in render_clip_frames(seed, frames, *small, style):
            if render_scale > 1:
                image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
            writer.write(np.ascontiguousarray(image[..., ::-1]))
    finally:
        writer.release()
    os.replace(partial, path)
    return path


def write_image_video(images: Path, path: Path, fps: float = 10.0) -> int:
    """The images of a folder, sorted by name, as an MP4 at their first image's size (others are
    resized to it); written beside, then renamed. Returns the number of frames."""

    files = sorted(p for p in Path(images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"image folder {images} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    first = cv2.imread(str(files[0]), cv2.IMREAD_COLOR)
    if first is None:
        raise DataError(f"cannot read image {files[0]}")
    height, width = first.shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.parent / f".{path.stem}.partial.mp4"
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    try:
        for file in files:
            frame = cv2.imread(str(file), cv2.IMREAD_COLOR)
            if frame is None:
                raise DataError(f"cannot read image {file}")
            if frame.shape[:2] != (height, width):
                frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
            writer.write(frame)
    except BaseException:
        writer.release()
        partial.unlink(missing_ok=True)
        raise
    writer.release()
    partial.replace(path)
    return len(files)
