"""Segmentation data: real CamVid and Cityscapes samples, and files written in other layouts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.io import savemat

from cycada.errors import DataError
from cycada.training.segmentation.data import load_segmentation
from cycada.training.segmentation.label_spaces import CITYSCAPES19, SYNTHIA13
from cycada.training.segmentation.scene_writer import write_clip, write_scene_dataset
from cycada.training.segmentation.scenes import render_scene
from cycada.training.segmentation.transforms import SegTransform
from tests.helpers import data_path


@pytest.mark.data
def test_camvid_maps_onto_the_19_train_ids():
    root = data_path("camvid").parent
    train = load_segmentation("camvid", "train", root)
    assert len(train) == 367 and train.labelled
    image, label = train.load_raw(0)
    assert image.shape == (360, 480, 3) and label.shape == (360, 480)
    assert set(np.unique(label)) <= {0, 1, 2, 4, 5, 7, 8, 10, 11, 12, 13, 255}
    assert train.mapping.evaluated == (0, 1, 2, 4, 5, 7, 8, 10, 11, 12, 13)
    assert len(load_segmentation("camvid", "test", root)) == 233


@pytest.mark.data
def test_cityscapes_label_ids_map_like_the_official_train_ids():
    root = data_path("cityscapes_samples", "pseudo_cityscapes_dataset")
    val = load_segmentation("cityscapes", "val", root)
    _, label = val.load_raw(0)
    official = cv2.imread(str(next(root.rglob("*_gtFine_labelTrainIds.png"))), cv2.IMREAD_UNCHANGED)
    # the sample's two label files were downscaled separately: 0.2% boundary pixels differ
    assert (label == official).mean() > 0.995


def test_gta5_layout_with_official_split_file(tmp_path):
    write_scene_dataset(tmp_path / "gta5", 4, "game", "gta5", 64, 32)
    savemat(
        tmp_path / "gta5" / "split.mat",
        {
            "trainIds": np.array([[1], [2], [4]]),
            "valIds": np.array([[3]]),
            "testIds": np.array([[3]]),
        },
    )
    assert len(load_segmentation("gta5", "train", tmp_path)) == 3
    val = load_segmentation("gta5", "val", tmp_path)
    assert [item.image.name for item in val.items] == ["00003.png"]
    assert len(load_segmentation("gta5", "all", tmp_path)) == 4  # every image, not only train
    assert len(load_segmentation("gta5", "train+val", tmp_path)) == 4


def test_cityscapes_train_extra_as_an_unlabelled_target(tmp_path):
    write_scene_dataset(tmp_path / "cityscapes", 3, "camera", "cityscapes", 64, 32, split="train")
    extra = tmp_path / "cityscapes" / "leftImg8bit" / "train_extra" / "bochum"
    extra.mkdir(parents=True)
    for index in range(2):  # train_extra has coarse labels only: its images come unlabelled
        image = np.zeros((32, 64, 3), np.uint8)
        cv2.imwrite(str(extra / f"bochum_{index:06d}_000019_leftImg8bit.png"), image)
    both = load_segmentation("cityscapes", "train+train_extra", tmp_path)
    assert len(both) == 5 and not both.labelled
    assert load_segmentation("cityscapes", "train", tmp_path).labelled


def _write_synthia(folder, shape=(32, 64), ids=(3, 10)):
    (folder / "RGB").mkdir(parents=True)
    (folder / "GT" / "LABELS").mkdir(parents=True)
    image = np.zeros((*shape, 3), np.uint8)
    label = np.zeros((*shape, 3), np.uint16)
    label[: shape[0] // 2, :, 2] = ids[0]  # class id in the red channel (BGR index 2)
    label[shape[0] // 2 :, :, 2] = ids[1]
    label[..., 0] = 999  # instance ids in another channel must not matter
    cv2.imwrite(str(folder / "RGB" / "0000001.png"), image)
    cv2.imwrite(str(folder / "GT" / "LABELS" / "0000001.png"), label)


def test_synthia_rand_cityscapes_layout(tmp_path):
    _write_synthia(tmp_path / "synthia")
    data = load_segmentation("synthia", "train", tmp_path)
    _, label = data.load_raw(0)
    assert set(np.unique(label)) == {0, 11}  # road, person


def test_synthia_seqs_13_classes(tmp_path):
    sequence = tmp_path / "synthia" / "SYNTHIA-SEQS-01-FALL"
    for index in range(10):
        folder = sequence
        for sub in ("RGB", "GT/LABELS"):
            (folder / sub / "Stereo_Left" / "Omni_F").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(
            str(sequence / "RGB/Stereo_Left/Omni_F" / f"{index:06d}.png"),
            np.zeros((8, 8, 3), np.uint8),
        )
        label = np.zeros((8, 8, 3), np.uint16)
        label[..., 2] = 12  # lanemarking
        cv2.imwrite(str(sequence / "GT/LABELS/Stereo_Left/Omni_F" / f"{index:06d}.png"), label)
    train = load_segmentation("synthia-seqs:fall", "train", tmp_path, SYNTHIA13)
    test = load_segmentation("synthia-seqs:fall", "test", tmp_path, SYNTHIA13)
    assert (len(train), len(test)) == (9, 1)
    assert set(np.unique(test.load_raw(0)[1])) == {SYNTHIA13.classes.index("lanemarking")}


def test_unexpected_label_ids_name_the_file(tmp_path):
    write_scene_dataset(tmp_path / "gta5", 1, "game", "gta5", 64, 32)
    path = tmp_path / "gta5" / "labels" / "00001.png"
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    label[0, 0] = 77
    cv2.imwrite(str(path), label)
    with pytest.raises(DataError, match=r"unexpected label ids \[77\] in .*00001\.png"):
        load_segmentation("gta5", "train", tmp_path).load_raw(0)


def test_image_label_size_mismatch_names_the_file(tmp_path):
    write_scene_dataset(tmp_path / "gta5", 1, "game", "gta5", 64, 32)
    path = tmp_path / "gta5" / "labels" / "00001.png"
    cv2.imwrite(str(path), np.zeros((16, 16), np.uint8))
    with pytest.raises(DataError, match=r"label .*00001\.png is 16x16 but its image"):
        load_segmentation("gta5", "train", tmp_path).load_raw(0)


def test_folder_domain_with_mapping_and_list(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "labs").mkdir()
    for name in ("a", "b"):
        cv2.imwrite(str(tmp_path / "imgs" / f"{name}.jpg"), np.zeros((8, 8, 3), np.uint8))
        cv2.imwrite(str(tmp_path / "labs" / f"{name}.png"), np.full((8, 8), 5, np.uint8))
    (tmp_path / "map.txt").write_text("# raw train\n5 13\n")
    (tmp_path / "val.txt").write_text("b.jpg\n")
    name = f"folder:{tmp_path / 'imgs'}:{tmp_path / 'labs'}:{tmp_path / 'map.txt'}"
    data = load_segmentation(name, "val", tmp_path)
    assert len(data) == 1 and set(np.unique(data.load_raw(0)[1])) == {13}
    assert len(load_segmentation(name, "train", tmp_path)) == 2


def test_empty_split_and_unknown_name(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "labs").mkdir()
    with pytest.raises(DataError, match="imgs holds no images"):
        load_segmentation(f"folder:{tmp_path / 'imgs'}:{tmp_path / 'labs'}", "train", tmp_path)
    with pytest.raises(DataError, match="unknown segmentation data set 'gta'"):
        load_segmentation("gta", "train", tmp_path)


def test_transform_keeps_labels_aligned_and_nearest():
    image, label = render_scene(3, 256, 128, "game")
    out_image, out_label = SegTransform(resize_width=128, crop_height=48, crop_width=64, flip=True)(
        image, label, np.random.default_rng(0)
    )
    assert out_image.shape == (48, 64, 3) and out_label.shape == (48, 64)
    assert set(np.unique(out_label)) <= set(np.unique(label))  # nearest: no new ids


def test_synthetic_scenes_two_styles_same_layout():
    game, labels = render_scene(7, 256, 128, "game")
    camera, labels_camera = render_scene(7, 256, 128, "camera")
    np.testing.assert_array_equal(labels, labels_camera)
    assert len(np.unique(labels)) >= 8  # many classes per scene
    grey = lambda im: im.astype(float).std(axis=2).mean()  # noqa: E731
    assert grey(game) > 1.5 * grey(camera)  # game colours are more saturated
    again, _ = render_scene(7, 256, 128, "game")
    np.testing.assert_array_equal(game, again)
    assert set(np.unique(labels)) <= set(range(19))


def test_scene_layouts_and_clip(tmp_path):
    write_scene_dataset(tmp_path / "cs", 2, "camera", "cityscapes", 64, 32, split="val")
    data = load_segmentation("cityscapes", "val", tmp_path / "cs")
    assert len(data) == 2 and data.labelled
    clip = write_clip(tmp_path / "clip.mp4", 12, 64, 32)
    capture = cv2.VideoCapture(str(clip))
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == 12
    assert CITYSCAPES19.colorize(np.array([[0, 255]], np.uint8)).tolist() == [
        [[128, 64, 128], [0, 0, 0]]
    ]


@pytest.mark.data
def test_camvid_as_a_folder_domain_with_void_mapped_to_255(tmp_path):
    """The mapping a new user writes for CamVid: classes to train ids, void (11) to ignore."""
    from cycada.training.segmentation.label_spaces import CAMVID_TO_TRAIN
    from cycada.training.segmentation.metrics import segmentation_metrics

    root = data_path("camvid")
    mapping = tmp_path / "camvid.txt"
    mapping.write_text("".join(f"{raw} {train}\n" for raw, train in CAMVID_TO_TRAIN.items()))
    mapping.write_text(mapping.read_text() + "11 255  # void\n")
    test = load_segmentation(f"folder:{root / 'test'}:{root / 'testannot'}:{mapping}", "test", ".")
    assert len(test) == 233 and 255 not in test.mapping.evaluated
    _, label = test.load_raw(0)
    confusion = np.zeros((19, 19), np.int64)
    valid = label != 255
    np.add.at(confusion, (label[valid], label[valid]), 1)
    metrics = segmentation_metrics(confusion, CITYSCAPES19.classes, test.mapping.evaluated)
    assert metrics["miou"] == 1.0 and len(metrics["evaluated_classes"]) == 11


def test_mapping_file_errors_name_the_file(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    cv2.imwrite(str(images / "a.png"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(labels / "a.png"), np.full((8, 8), 3, np.uint8))
    mapping = tmp_path / "map.txt"
    mapping.write_text("3 40\n")
    with pytest.raises(DataError, match=r"map.txt: raw id 3 maps to 40, outside cityscapes19"):
        load_segmentation(f"folder:{images}:{labels}:{mapping}", "train", ".")
    mapping.write_text("4 1\n")
    dataset = load_segmentation(f"folder:{images}:{labels}:{mapping}", "train", ".")
    with pytest.raises(DataError, match=r"label ids \[3\] in .*a.png are missing from .*map.txt"):
        dataset.load_raw(0)
    unlabelled = load_segmentation(f"folder:{images}", "train", ".")
    assert not unlabelled.labelled and unlabelled.items[0].label is None
