import bz2
import gzip
import re
import struct

import cv2
import numpy as np
import pytest
from scipy.io import savemat

from cycada.errors import DataError
from cycada.training.digits.data import load_digits, read_idx
from cycada.training.digits.synthetic import render_synthetic_digits
from tests.helpers import data_path


def write_idx(path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


@pytest.mark.data
def test_real_mnist_test_split():
    root = data_path("mnist").parent
    digits = load_digits("mnist", "test", root)
    assert digits.images.shape == (10000, 28, 28, 1)
    assert digits.images.dtype == np.uint8
    assert np.bincount(digits.labels).tolist()[:2] == [980, 1135]  # official class counts


@pytest.mark.data
@pytest.mark.parametrize("split,count", [("train", 7291), ("test", 2007)])
def test_real_usps_zip_layout(split, count):
    root = data_path("usps").parent
    digits = load_digits("usps", split, root)
    assert digits.images.shape == (count, 16, 16, 1)
    assert set(np.unique(digits.labels)) == set(range(10))
    assert digits.images.min() == 0 and digits.images.max() == 255  # [-1, 1] mapped to 0..255


@pytest.mark.data
def test_usps_libsvm_layout_matches_zip_layout(tmp_path):
    """The LIBSVM file holds the same images with labels 1..10 and sparse index:value pairs."""
    with gzip.open(data_path("usps", "zip.test.gz"), "rt") as handle:
        rows = [line.split() for _, line in zip(range(40), handle)]
    lines = []
    for row in rows:
        label, values = int(float(row[0])), row[1:]
        pairs = [f"{i + 1}:{v}" for i, v in enumerate(values) if float(v) != -1.0]
        lines.append(" ".join([str(label + 1), *pairs]))
    (tmp_path / "usps").mkdir()
    with bz2.open(tmp_path / "usps" / "usps.t.bz2", "wt") as handle:
        handle.write("\n".join(lines) + "\n")
    from_libsvm = load_digits("usps", "test", tmp_path)
    from_zip = load_digits("usps", "test", data_path("usps").parent).head(40)
    np.testing.assert_array_equal(from_libsvm.labels, from_zip.labels)
    np.testing.assert_array_equal(from_libsvm.images, from_zip.images)


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_idx_layout_round_trip(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, compress)
    digits = load_digits("mnist", "train", tmp_path)
    np.testing.assert_array_equal(digits.images[..., 0], images)
    np.testing.assert_array_equal(digits.labels, labels)


def test_truncated_idx_is_a_clear_error(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    write_idx(path, np.zeros((5, 28, 28), np.uint8), compress=False)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_svhn_mat_layout_maps_label_10_to_0(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (32, 32, 3, 4), dtype=np.uint8)
    y = np.array([[10], [1], [9], [10]], dtype=np.uint8)
    (tmp_path / "svhn").mkdir()
    savemat(tmp_path / "svhn" / "test_32x32.mat", {"X": x, "y": y})
    digits = load_digits("svhn", "test", tmp_path)
    assert digits.labels.tolist() == [0, 1, 9, 0]
    assert digits.images.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(digits.images[2], x[:, :, :, 2])


def test_missing_files_name_what_is_expected(tmp_path):
    with pytest.raises(DataError, match=r"train_32x32\.mat.*housenumbers"):
        load_digits("svhn", "train", tmp_path)
    with pytest.raises(DataError, match=r"zip\.train\.gz or usps\.bz2"):
        load_digits("usps", "train", tmp_path)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz"):
        load_digits("mnist", "train", tmp_path)


def test_unknown_data_set_lists_valid_names(tmp_path):
    with pytest.raises(DataError, match=r"unknown digit data set 'mnsit' \(valid: .*mnist"):
        load_digits("mnsit", "train", tmp_path)


def _write_folder(root, sizes=((12, 12),), bad=None):
    for label in range(3):
        folder = root / str(label)
        folder.mkdir(parents=True)
        for index, (h, w) in enumerate(sizes):
            cv2.imwrite(str(folder / f"{index}.png"), np.full((h, w, 3), 40 * label, np.uint8))
    if bad:
        (root / "1" / bad).write_bytes(b"not an image at all")


def test_folder_data_set(tmp_path):
    _write_folder(tmp_path / "digits")
    digits = load_digits(f"folder:{tmp_path / 'digits'}", "train", tmp_path)
    assert digits.images.shape == (3, 12, 12, 3)
    assert digits.labels.tolist() == [0, 1, 2]
    assert digits.class_names == ["0", "1", "2"]


def test_folder_data_set_unreadable_file_is_named(tmp_path):
    _write_folder(tmp_path / "digits", bad="broken.png")
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png"):
        load_digits(f"folder:{tmp_path / 'digits'}", "train", tmp_path)


def test_folder_data_set_mixed_sizes_is_an_error(tmp_path):
    _write_folder(tmp_path / "digits", sizes=((12, 12), (10, 12)))
    with pytest.raises(DataError, match="all images must have one size"):
        load_digits(f"folder:{tmp_path / 'digits'}", "train", tmp_path)


def test_synthetic_digits_are_deterministic_and_balanced():
    images, labels = render_synthetic_digits(50, seed=3)
    again, labels_again = render_synthetic_digits(50, seed=3)
    other, _ = render_synthetic_digits(50, seed=4)
    assert images.shape == (50, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, labels_again)
    assert not np.array_equal(images, other)
    assert np.bincount(labels).tolist() == [5] * 10
    assert images.std() > 20  # colour, backgrounds and strokes vary


@pytest.mark.data
def test_split_slices_cut_disjoint_parts_of_a_real_split():
    root = data_path("mnist").parent
    whole = load_digits("mnist", "test", root)
    first = load_digits("mnist", "test[:50%]", root)
    rest = load_digits("mnist", "test[50%:]", root)
    assert (len(first), len(rest)) == (5000, 5000)
    assert first.split == "test[:50%]"  # results name the part they were measured on
    assert np.array_equal(np.concatenate([first.images, rest.images]), whole.images)
    counted = load_digits("usps", "test[100:300]", data_path("usps").parent)
    assert len(counted) == 200


@pytest.mark.parametrize(
    "split,message",
    [
        ("train[:150%]", "'150%' is not a count or a percentage"),
        ("train[a:]", "'a' is not a count"),
        ("train[5", "is not SPLIT or SPLIT[START:STOP]"),
        ("train[900:100]", "the slice is empty"),
    ],
)
def test_bad_split_slices_are_clear_errors(split, message):
    with pytest.raises(DataError, match=re.escape(message)):
        load_digits("synth", split, "unused", synthetic_size=200)
