"""Request checks, frame decoding and same-size grouping used by the Python-backend models."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cycada.serving.batching import (
    Checked,
    Failure,
    check_images,
    decode_frames,
    encoded_size,
    run_grouped,
)
from tests.helpers import jpeg_with_orientation


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
    assert bad.images is None and "not a JPEG or PNG file" in bad.error and bad.bad_input
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
    assert results[1] == Failure("bad", bad_input=True)
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
    assert results[1] == Failure("inference failed: boom", bad_input=False)  # the server's fault
    assert list(results[0][0]) == [1, 1, 1] and list(results[2][0]) == [2, 2, 2]


def test_torch_tensors_are_grouped_with_torch():
    import torch

    checked = [Checked(torch.full((1, 2, 2, 3), v, dtype=torch.uint8)) for v in (1, 2)]
    results = run_grouped(checked, lambda batch: [batch.sum(dim=(1, 2, 3))], max_batch=8)
    assert [int(r[0][0]) for r in results] == [12, 24]


def _jpeg(height, width, grey=False):
    image = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    if grey:
        image = image[..., 0]
    return cv2.imencode(".jpg", image)[1].reshape(-1)


def test_sizes_come_from_the_headers():
    assert encoded_size(_jpeg(30, 50).tobytes()) == (30, 50)
    png = cv2.imencode(".png", np.zeros((7, 9, 3), np.uint8))[1].tobytes()
    assert encoded_size(png) == (7, 9)
    assert encoded_size(b"\xff\xd8\xff") is None and encoded_size(b"GIF89a") is None


def test_decompression_bomb_refused_before_decoding():
    """A 5000x5000 all-zero PNG is a few KB on the wire and 75 MB decoded: never decoded."""
    bomb = cv2.imencode(".png", np.zeros((5000, 5000), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    data = bomb[1].reshape(1, -1)
    assert data.size < 100_000

    class NeverDecodes:
        def decode(self, row):
            raise AssertionError("decoded a frame over the pixel limit")

    checked = decode_frames(data, max_pixels=4096 * 4096, decoder=NeverDecodes())
    assert "5000x5000, over the pixel limit" in checked.error and checked.bad_input
    many = np.stack([_jpeg(64, 64)] * 4)
    over = decode_frames(
        many, max_pixels=64 * 64, decoder=NeverDecodes(), max_request_pixels=3 * 64 * 64
    )
    assert "pixels per request" in over.error
    assert (
        "over the request limit"
        in check_images(np.zeros((4, 8, 8, 3), np.uint8), 3, max_request_pixels=100).error
    )


def test_truncated_jpeg_refused_unless_allowed():
    whole = _jpeg(64, 64)
    third = whole[: len(whole) // 3][None]
    checked = decode_frames(third)
    assert checked.images is None and "truncated" in checked.error and checked.bad_input
    called = []

    class Recording:  # OpenCV 4.10 (the stub's) fills the missing part grey; 5.0 refuses it
        def decode(self, row):
            called.append(len(row))
            return np.zeros((64, 64, 3), np.uint8)

        def stack(self, images):
            return np.stack(images)

    assert decode_frames(third, allow_truncated=True, decoder=Recording()).images is not None
    assert called == [third.shape[1]]
    padded = np.zeros((2, len(whole) + 10), np.uint8)  # a batch row padded with zeros is whole
    padded[0, : len(whole)] = whole
    padded[1, : len(whole)] = whole
    assert decode_frames(padded).images.shape == (2, 64, 64, 3)


def test_a_decoder_fault_is_the_servers_not_the_clients():
    class OutOfMemory:
        def decode(self, row):
            raise MemoryError("CUDA out of memory")

    checked = decode_frames(_jpeg(8, 8)[None], decoder=OutOfMemory())
    assert "decoder failed: CUDA out of memory" in checked.error and not checked.bad_input


def test_gpu_decoder_agrees_with_the_cpu_path_on_grey_and_rotated_jpegs():
    """nvJPEG is replaced by a stand-in with its contract (one channel for a grey JPEG, EXIF
    ignored): the decoder must give three channels, and route rotated JPEGs to OpenCV."""
    import torch

    from cycada.serving.engines import CudaFrameDecoder, FrameDecoder, exif_orientation

    calls = []

    def nvjpeg_like(raw, mode=None, device=None):
        calls.append(mode)
        grey = cv2.imdecode(raw.numpy(), cv2.IMREAD_GRAYSCALE)
        return torch.from_numpy(grey)[None]

    decoder = CudaFrameDecoder("cpu", decode_jpeg=nvjpeg_like, rgb_mode="RGB")
    grey = _jpeg(24, 40, grey=True)
    image = decoder.decode(grey)
    assert tuple(image.shape) == (24, 40, 3) and calls == ["RGB"]
    assert (image[..., 0] == image[..., 2]).all()
    rotated = jpeg_with_orientation(_jpeg(24, 40), 6)
    assert exif_orientation(rotated.tobytes()) == 6 and exif_orientation(grey.tobytes()) == 1
    expected = FrameDecoder().decode(rotated)
    assert expected.shape == (40, 24, 3)  # OpenCV applies the rotation
    np.testing.assert_array_equal(decoder.decode(rotated).numpy(), expected)
    assert calls == ["RGB"]  # the rotated JPEG did not go to the stand-in


def test_padding_is_trimmed_in_one_pass_and_long_rows_are_refused_before_any_work():
    """A small JPEG followed by megabytes of zeros (gzip makes it tiny on the wire) held an
    instance for 33 s when numpy's trim_zeros walked the padding; over the limit, a row is
    refused from its length alone."""
    from cycada.serving.batching import trimmed_length

    jpeg = _jpeg(16, 16)
    row = np.zeros((1, 20 * 1024 * 1024), np.uint8)
    row[0, : len(jpeg)] = jpeg
    assert trimmed_length(row[0]) == len(jpeg) and trimmed_length(np.zeros(5, np.uint8)) == 0
    assert decode_frames(row).images.shape == (1, 16, 16, 3)

    class Untouched:
        def decode(self, data):
            raise AssertionError("a refused row must not be decoded")

    checked = decode_frames(row, decoder=Untouched(), max_frame_bytes=1024 * 1024)
    assert "over the limit of 1048576" in checked.error and checked.bad_input


def test_a_jpeg_of_fill_bytes_is_refused_without_scanning_them_all():
    """0xFF fill bytes before a marker are legal and skipped one at a time: the header scan
    stops after its first megabyte instead of walking 20 MB in Python."""
    data = b"\xff\xd8" + b"\xff" * (20 * 1024 * 1024) + b"\xc0\x00\x11\x08\x00\x10\x00\x10"
    assert encoded_size(data) is None


def test_a_gpu_decoder_fault_is_internal_and_a_file_nvjpeg_refuses_goes_to_opencv():
    import torch

    from cycada.serving.engines import CudaFrameDecoder

    def failing(message):
        def decode_jpeg(raw, mode=None, device=None):
            raise RuntimeError(message)

        return decode_jpeg

    jpeg = _jpeg(24, 40)[None]
    out_of_memory = CudaFrameDecoder("cpu", decode_jpeg=failing("CUDA error: out of memory"))
    checked = decode_frames(jpeg, decoder=out_of_memory)
    assert "decoder failed: CUDA error: out of memory" in checked.error
    assert not checked.bad_input  # INTERNAL: the client may retry; its JPEG was fine
    refused = CudaFrameDecoder("cpu", decode_jpeg=failing("Unsupported JPEG marker"))
    checked = decode_frames(jpeg, decoder=refused)
    assert checked.error is None and tuple(checked.images.shape) == (1, 24, 40, 3)
    assert isinstance(checked.images, torch.Tensor)


def test_a_batch_holds_no_more_pixels_than_the_budget_and_a_big_request_runs_in_parts():
    """Triton's batcher joins requests each within the per-request limit; the engine must not
    run their sum at once (float scores per class and pixel): chunks respect the budget,
    requests stay whole in a chunk, and one request over it alone runs in parts."""
    calls = []

    def run(batch):
        calls.append(batch.shape[0])
        return [batch[:, 0, 0, 0].copy()]

    checked = [Checked(np.full((2, 4, 4, 3), v, np.uint8)) for v in (1, 2, 3)]
    checked.append(Checked(np.full((5, 4, 4, 3), 4, np.uint8)))
    results = run_grouped(checked, run, max_batch=8, max_batch_pixels=4 * 16)  # 4 images
    assert calls == [4, 2, 4, 1]  # [1, 2] [3] then request 4 alone in parts of 4 and 1
    assert [list(r[0]) for r in results] == [[1, 1], [2, 2], [3, 3], [4] * 5]
