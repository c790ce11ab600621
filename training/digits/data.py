"""Digit data sets read from their official files.

Each loader returns a :class:`DigitSet` of uint8 images (N, H, W, C) and int64 labels in
0..9. Names a user can pass: ``mnist``, ``usps``, ``svhn``, ``synth`` and ``folder:PATH``.
Files are looked up under ``<data_root>/<name>/`` and then ``<data_root>/``.
"""

from __future__ import annotations

import bz2
import gzip
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cycada.errors import DataError
from cycada.training.digits.synthetic import render_synthetic_digits

DIGIT_CLASSES = [str(i) for i in range(10)]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class DigitSet:
    """Images (N, H, W, C) uint8 and labels (N,) int64 of one split of one domain."""

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise DataError(
                f"{self.name}/{self.split}: {len(self.images)} images but {len(self.labels)} labels"
            )
        if len(self.images) == 0:
            raise DataError(f"{self.name}/{self.split}: the split is empty")

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])

    @property
    def labelled(self) -> bool:
        """False for an unlabelled folder (labels all -1): usable as a target only."""
        return bool(self.class_names) and bool((self.labels >= 0).all())

    @property
    def size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> DigitSet:
        """The first ``n`` samples (all when n <= 0)."""
        if n <= 0 or n >= len(self):
            return self
        return DigitSet(self.name, self.split, self.images[:n], self.labels[:n], self.class_names)


def _find(root: Path, name: str, candidates: list[str]) -> Path | None:
    for folder in (root / name, root / name.upper(), root / name / "raw", root):
        for candidate in candidates:
            path = folder / candidate
            if path.is_file():
                return path
    return None


def _missing(name: str, split: str, root: Path, expected: list[str], source: str) -> DataError:
    return DataError(
        f"{name} {split} split not found under {root} (looked in {root / name} and {root}): "
        f"expected {' or '.join(expected)}, from {source}"
    )


def _open_maybe_gz(path: Path) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            return handle.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST's format): magic, dims, then big-endian data."""
    raw = _open_maybe_gz(path)
    if len(raw) < 4:
        raise DataError(f"{path} is not an IDX file (too short)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if zero != 0 or dtype_code not in dtypes:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=dtypes[dtype_code], offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: header says {dims}, file holds {data.size} values")
    return data.reshape(dims)


def load_mnist(root: Path, split: str) -> DigitSet:
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise DataError(f"mnist has splits train and test, not '{split}'")
    names = {
        kind: [f"{prefix}-{kind}-idx{n}-ubyte.gz", f"{prefix}-{kind}-idx{n}-ubyte"]
        for kind, n in (("images", 3), ("labels", 1))
    }
    image_path = _find(root, "mnist", names["images"])
    label_path = _find(root, "mnist", names["labels"])
    if image_path is None or label_path is None:
        expected = names["images"][:1] + names["labels"][:1]
        raise _missing("mnist", split, root, [" and ".join(expected)], "yann.lecun.com/exdb/mnist")
    images = read_idx(image_path)
    labels = read_idx(label_path).astype(np.int64)
    if images.ndim != 3:
        raise DataError(f"{image_path}: expected 3 dimensions (N, 28, 28), got {images.shape}")
    return DigitSet("mnist", split, images[..., None].copy(), labels, DIGIT_CLASSES)


def _usps_to_uint8(values: np.ndarray) -> np.ndarray:
    pixels = np.clip((values + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return pixels.reshape(-1, 16, 16, 1)


def _parse_usps_zip_text(path: Path) -> tuple[np.ndarray, np.ndarray]:
    text = _open_maybe_gz(path).decode("ascii", errors="replace")
    rows = [line.split() for line in text.splitlines() if line.strip()]
    if not rows or any(len(r) != 257 for r in rows):
        bad = next((i for i, r in enumerate(rows) if len(r) != 257), 0)
        raise DataError(f"{path}: line {bad + 1} does not hold a label and 256 pixel values")
    table = np.asarray(rows, dtype=np.float64)
    return _usps_to_uint8(table[:, 1:]), table[:, 0].astype(np.int64)


def _parse_usps_libsvm(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """LIBSVM layout: ``label idx:value ...`` with labels 1..10 meaning digits 0..9."""
    try:
        with bz2.open(path, "rt") as handle:
            lines = [line.split() for line in handle if line.strip()]
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    values = np.full((len(lines), 256), -1.0)
    labels = np.empty(len(lines), dtype=np.int64)
    for row, parts in enumerate(lines):
        labels[row] = int(float(parts[0])) - 1
        for item in parts[1:]:
            index, value = item.split(":")
            values[row, int(index) - 1] = float(value)
    return _usps_to_uint8(values), labels


def load_usps(root: Path, split: str) -> DigitSet:
    if split not in ("train", "test"):
        raise DataError(f"usps has splits train and test, not '{split}'")
    zip_name = f"zip.{split}.gz"
    libsvm_name = "usps.bz2" if split == "train" else "usps.t.bz2"
    path = _find(root, "usps", [zip_name, f"zip.{split}", libsvm_name])
    if path is None:
        raise _missing(
            "usps",
            split,
            root,
            [zip_name, libsvm_name],
            "the ESL 'ZIP code' data (web.stanford.edu/~hastie/ElemStatLearn) or LIBSVM's usps",
        )
    if path.name.endswith(".bz2"):
        images, labels = _parse_usps_libsvm(path)
    else:
        images, labels = _parse_usps_zip_text(path)
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: labels outside 0..9 ({labels.min()}..{labels.max()})")
    return DigitSet("usps", split, images, labels, DIGIT_CLASSES)


def load_svhn(root: Path, split: str) -> DigitSet:
    if split not in ("train", "test", "extra"):
        raise DataError(f"svhn has splits train, test and extra, not '{split}'")
    name = f"{split}_32x32.mat"
    path = _find(root, "svhn", [name])
    if path is None:
        raise _missing("svhn", split, root, [name], "ufldl.stanford.edu/housenumbers")
    # scipy: only for SVHN's .mat files (the command line imports this module)
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except Exception as exc:  # scipy raises several types for damaged files
        raise DataError(f"cannot read {path}: {exc}") from None
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path}: expected variables X (32x32x3xN) and y (Nx1)")
    images = np.ascontiguousarray(np.transpose(mat["X"], (3, 0, 1, 2))).astype(np.uint8)
    labels = mat["y"].reshape(-1).astype(np.int64)
    labels[labels == 10] = 0  # SVHN writes the digit 0 as label 10
    return DigitSet("svhn", split, images, labels, DIGIT_CLASSES)


def load_synth(size: int, split: str, seed: int = 0) -> DigitSet:
    split_seed = {"train": 1, "test": 2, "extra": 3}.get(split)
    if split_seed is None:
        raise DataError(f"synth has splits train, test and extra, not '{split}'")
    count = size if split != "test" else max(size // 5, 100)
    images, labels = render_synthetic_digits(count, seed=seed * 1000 + split_seed)
    return DigitSet("synth", split, images, labels, DIGIT_CLASSES)


def load_image_folder(path: Path, split: str) -> DigitSet:
    """A class-per-subfolder tree (``PATH/<split>/<class>/`` when split folders exist), or
    images with no class subfolders: an unlabelled domain (labels -1), a target only."""
    if not path.is_dir():
        raise DataError(f"folder data set {path} does not exist")
    base = path / split if (path / split).is_dir() else path
    class_dirs = sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        files = sorted(f for f in base.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(
                f"folder data set {base} has neither class subfolders ({base}/<class>/) nor "
                f"images ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        images = _read_same_size(files)
        return DigitSet(f"folder:{path}", split, images, np.full(len(files), -1), [])
    class_names = [d.name for d in class_dirs]
    if all(n.isdigit() for n in class_names):
        class_names = sorted(class_names, key=int)
        class_dirs = [base / n for n in class_names]
    files, labels = [], []
    for index, folder in enumerate(class_dirs):
        for file in sorted(folder.rglob("*")):
            if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
                files.append(file)
                labels.append(index)
    if not files:
        raise DataError(
            f"folder data set {base} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    images = _read_same_size(files)
    return DigitSet(f"folder:{path}", split, images, np.asarray(labels), class_names)


def _read_same_size(files: list[Path]) -> np.ndarray:
    images, first_shape, first_file = [], None, None
    for file in files:
        image = cv2.imread(str(file), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise DataError(f"folder data set: cannot read image {file}")
        image = _to_hwc_rgb_or_grey(image)
        if first_shape is None:
            first_shape, first_file = image.shape, file
        elif image.shape != first_shape:
            raise DataError(
                f"folder data set: {file} is {image.shape[1]}x{image.shape[0]}x"
                f"{image.shape[2]} but {first_file} is {first_shape[1]}x{first_shape[0]}x"
                f"{first_shape[2]}; all images must have one size"
            )
        images.append(image)
    return np.stack(images)


def _to_hwc_rgb_or_grey(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if image.ndim == 2:
        return image[..., None]
    if image.shape[2] == 4:
        image = image[..., :3]
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


_LOADERS: dict[str, Callable[[Path, str], DigitSet]] = {
    "mnist": load_mnist,
    "usps": load_usps,
    "svhn": load_svhn,
}
DIGIT_DATASETS = sorted([*_LOADERS, "synth", "folder:PATH"])


_SLICE = re.compile(r"^(?P<split>[^\[\]]+)\[(?P<start>[^:\]]*):(?P<stop>[^:\]]*)\]$")
_BOUND = re.compile(r"^\d+%?$")


def parse_split(split: str) -> tuple[str, str, str]:
    """``"test[:50%]"`` → ("test", "", "50%"); a plain split name → (split, "", "").

    The slice notation of TensorFlow Datasets: image counts or percentages of the split, so
    that one split can be cut in disjoint parts, e.g. ``test[:50%]`` as the unlabelled target
    and ``test[50%:]`` to evaluate on images the adaptation never saw.
    """
    match = _SLICE.match(split)
    if match is None:
        if "[" in split or "]" in split:
            raise DataError(
                f"split '{split}' is not SPLIT or SPLIT[START:STOP] "
                "(counts or percentages, e.g. test[:50%], train[1000:])"
            )
        return split, "", ""
    for bound in (match["start"], match["stop"]):
        if bound and (
            _BOUND.match(bound) is None or (bound.endswith("%") and int(bound[:-1]) > 100)
        ):
            raise DataError(
                f"split '{split}': slice bound '{bound}' is not a count or a percentage 0-100%"
            )
    return match["split"], match["start"], match["stop"]


def _resolve_bound(bound: str, length: int, default: int) -> int:
    if not bound:
        return default
    if bound.endswith("%"):
        return round(length * int(bound[:-1]) / 100)
    return min(int(bound), length)


def slice_split(digits: DigitSet, split: str, start: str, stop: str) -> DigitSet:
    """The part ``[start:stop]`` of a loaded split, named by the full ``split`` string."""
    if not start and not stop:
        return digits
    first = _resolve_bound(start, len(digits), 0)
    last = _resolve_bound(stop, len(digits), len(digits))
    if first >= last:
        raise DataError(
            f"{digits.name}/{split}: the slice is empty ({digits.name}/{digits.split} has "
            f"{len(digits)} images)"
        )
    return DigitSet(
        digits.name, split, digits.images[first:last], digits.labels[first:last], digits.class_names
    )


def load_digits(
    name: str, split: str, data_root: str | Path, synthetic_size: int = 25000, seed: int = 0
) -> DigitSet:
    """Load split ``split`` of the digit domain ``name`` (see :data:`DIGIT_DATASETS`).

    ``split`` may carry a slice, ``SPLIT[START:STOP]`` (see :func:`parse_split`).
    """
    base, start, stop = parse_split(split)
    return slice_split(_load_whole(name, base, data_root, synthetic_size, seed), split, start, stop)


def _load_whole(
    name: str, split: str, data_root: str | Path, synthetic_size: int, seed: int
) -> DigitSet:
    root = Path(data_root)
    if name.startswith("folder:"):
        return load_image_folder(Path(name[len("folder:") :]).expanduser(), split)
    if name == "synth":
        return load_synth(synthetic_size, split, seed)
    loader = _LOADERS.get(name)
    if loader is None:
        raise DataError(f"unknown digit data set '{name}' (valid: {', '.join(DIGIT_DATASETS)})")
    return loader(root, split)
