"""Request checks, frame decoding and same-size grouping used by the Python-backend models."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cycada.serving.batching import Checked, check_images, decode_frames, run_grouped


@pytest.mark.parametrize(
    "array,message",
    [
        (None, "no 'images' input"),
        (np.zeros((1, 4, 4, 3), np.float32), "must be UINT8"),
        (np.zeros((4, 4, 3), np.uint8), "rank 3"),
        (np.zeros((1, 4, 4, 4), np.uint8), "3 channels, got 4"),
        (np.zeros((1, 0, 4, 3), np.uint8), "empty"),
        (np.zeros((1, 64, 64, 3), np.uint8), "larger than the limit"),
    ],
)
def test_bad_images_are_refused_with_a_reason(array, message):
    checked = check_images(array, 3, max_pixels=32 * 32)
    assert checked.images is None and message in checked.error


def test_frames_decode_to_rgb_and_garbage_is_refused():
    image = np.zeros((8, 10, 3), np.uint8)
    image[..., 0] = 200  # red in RGB
    ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    frames = np.stack([png.reshape(-1), png.reshape(-1)])
    checked = decode_frames(frames)
    assert checked.images.shape == (2, 8, 10, 3) and checked.images[0, 0, 0, 0] == 200
    bad = decode_frames(np.frombuffer(b"not an image", np.uint8)[None])
    assert bad.images is None and "not a decodable JPEG or PNG" in bad.error
    assert "no 'frames'" in decode_frames(np.zeros((1, 0), np.uint8)).error
    assert "must be UINT8" in decode_frames(np.array([[b"x"]], dtype=object)).error


def test_requests_are_batched_by_size_and_split_back_in_order():
    calls = []

    def run(batch):
        calls.append(batch.shape)
        return [batch[..., 0].copy(), batch.sum(axis=(1, 2, 3))]

    a = np.full((2, 4, 4, 3), 1, np.uint8)
    b = np.full((1, 8, 8, 3), 2, np.uint8)
    c = np.full((3, 4, 4, 3), 3, np.uint8)
    checked = [Checked(a), Checked(None, "bad"), Checked(b), Checked(c)]
    results = run_grouped(checked, run, max_batch=8)
    assert sorted(calls) == [(1, 8, 8, 3), (5, 4, 4, 3)]  # one call per size
    assert results[1] == "bad"
    assert results[0][0].shape == (2, 4, 4) and (results[0][0] == 1).all()
    assert results[2][0].shape == (1, 8, 8) and (results[2][0] == 2).all()
    assert results[3][0].shape == (3, 4, 4) and (results[3][0] == 3).all()


def test_batches_respect_the_maximum_and_failures_stay_local():
    def run(batch):
        if (batch == 9).any():
            raise RuntimeError("boom\nsecond line")
        return [batch[:, 0, 0, 0]]

    checked = [Checked(np.full((3, 2, 2, 3), v, np.uint8)) for v in (1, 9, 2)]
    results = run_grouped(checked, run, max_batch=4)
    assert results[1] == "inference failed: boom"
    assert list(results[0][0]) == [1, 1, 1] and list(results[2][0]) == [2, 2, 2]


def test_torch_tensors_are_grouped_with_torch():
    import torch

    checked = [Checked(torch.full((1, 2, 2, 3), v, dtype=torch.uint8)) for v in (1, 2)]
    results = run_grouped(checked, lambda batch: [batch.sum(dim=(1, 2, 3))], max_batch=8)
    assert [int(r[0][0]) for r in results] == [12, 24]
