"""A corpus of bad files for every command's file inputs, through the real command line.

Each case must end with exit code 2 and one line naming the file and what was expected, no
traceback, and nothing already written damaged (the run folder or repository as it was).
"""

from __future__ import annotations

import subprocess

import cv2
import numpy as np
import pytest

from tests.helpers import cycada, one_line_error

pytestmark = pytest.mark.slow


@pytest.fixture
def folder(tmp_path):
    """A tiny labelled folder domain: 4 black images, labels of raw id 7 (road)."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for index in range(4):
        cv2.imwrite(str(images / f"{index}.png"), np.zeros((64, 128, 3), np.uint8))
        cv2.imwrite(str(labels / f"{index}.png"), np.full((64, 128), 7, np.uint8))
    (tmp_path / "map.txt").write_text("7 0\n")
    return tmp_path


TRAIN = [
    "train", "seg", "--preset", "quick", "--network", "fastscnn", "--quiet",
    "--set", "source.iterations=2", "--set", "source.batch_size=2", "--set", "source.crop=64",
    "--set", "data.resize_width=128", "--set", "pixel.enabled=false",
    "--set", "feature.enabled=false",
]  # fmt: skip


def train(folder, *extra: str) -> subprocess.CompletedProcess:
    source = f"folder:{folder / 'images'}:{folder / 'labels'}:{folder / 'map.txt'}"
    target = f"folder:{folder / 'images'}"
    return cycada(*TRAIN, "--source", source, "--target", target, *extra)


def test_an_out_that_is_a_file(folder):
    (folder / "notes.txt").write_text("mine")
    for out in ("notes.txt", "notes.txt/run"):
        done = train(folder, "--out", str(folder / out))
        one_line_error(done, f"--out {folder / out}: expected a folder, found a file")
    done = cycada("demo", "--out", str(folder / "notes.txt"))
    one_line_error(done, f"--out {folder / 'notes.txt'}: expected a folder, found a file")
    assert (folder / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("key", ["source.batch_size=0", "source.crop=-3"])
def test_a_size_below_one_is_refused_before_training(folder, key):
    done = train(folder, "--set", key, "--out", str(folder / "run"))
    one_line_error(done, f"config key '{key.split('=')[0]}' is {key.split('=')[1]}; expected 1")
    assert not (folder / "run" / "checkpoints").exists()


def test_mapping_file_with_a_garbage_line(folder):
    (folder / "map.txt").write_text("7 0\nroad is zero\n")
    one_line_error(train(folder, "--out", str(folder / "run")), "map.txt:2", "RAW_ID TRAIN_ID")


def test_mapping_to_an_id_outside_the_label_space(folder):
    (folder / "map.txt").write_text("7 42\n")
    one_line_error(train(folder, "--out", str(folder / "run")), "maps to 42, outside")


def test_label_png_that_is_not_an_image(folder):
    (folder / "labels" / "2.png").write_bytes(b"garbage")
    one_line_error(train(folder, "--out", str(folder / "run")), "cannot read label", "2.png")


def test_label_of_another_size(folder):
    cv2.imwrite(str(folder / "labels" / "1.png"), np.zeros((10, 10), np.uint8))
    one_line_error(train(folder, "--out", str(folder / "run")), "1.png is 10x10")


def test_image_that_is_not_an_image(folder):
    (folder / "images" / "3.png").write_bytes(b"\x89PNG garbage")
    one_line_error(train(folder, "--out", str(folder / "run")), "cannot read image", "3.png")


@pytest.mark.parametrize(
    "text,message",
    [
        ("a: [1, 2\n", "is not valid YAML: expected ',' or ']', but got '<stream end>' at line 2"),
        ("- 1\n- 2\n", "must hold a mapping"),
    ],
)
def test_config_yaml(folder, text, message):
    (folder / "bad.yaml").write_text(text)
    done = train(folder, "--config", str(folder / "bad.yaml"), "--out", str(folder / "run"))
    one_line_error(done, "bad.yaml", message)


def test_truncated_and_garbage_checkpoints_and_a_run_folder_that_stays_intact(folder):
    run = folder / "run"
    assert train(folder, "--out", str(run)).returncode == 0
    checkpoint = run / "checkpoints" / "source.safetensors"
    whole = checkpoint.read_bytes()
    broken = folder / "broken.safetensors"
    for data in (whole[: len(whole) // 3], b"\x00" * 64, b""):
        broken.write_bytes(data)
        done = cycada("eval", "seg", str(broken), "--dataset", "camvid")
        one_line_error(done, "broken.safetensors")
    done = cycada("eval", "digits", str(checkpoint), "--dataset", "synth")  # another task's
    one_line_error(done, "is a seg run's checkpoint, not a digits one: cycada eval seg")
    checkpoint.write_bytes(whole[: len(whole) // 2])  # a run folder with a damaged checkpoint
    repository = folder / "repo"
    one_line_error(
        cycada("export", str(run), "--repository", str(repository)), "source.safetensors"
    )
    assert not list(repository.rglob("model.onnx"))  # nothing half-exported
    again = train(folder, "--out", str(run))
    one_line_error(again, "source.safetensors", "truncated or corrupt")
