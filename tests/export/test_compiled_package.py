"""The compiled package's wrapper: frames of any size reach a package that takes only sides that
are multiples of the network's stride (and at least MIN_SIDE), with the graph's own padding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cycada.export.compiled import MIN_SIDE
from cycada.models.packages import PaddedPackage


def _graph(images: torch.Tensor):
    """Stands in for a segmentation graph: labels and confidence from the pixels themselves,
    so the crop can be checked pixel by pixel."""
    return images[..., 0] // 2, images[..., 1]


def _strict_package(multiple: int):
    def run(images: torch.Tensor):
        assert images.shape[1] % multiple == 0 and images.shape[2] % multiple == 0
        return _graph(images)

    return run


def test_any_frame_size_is_padded_with_edge_pixels_and_cropped_back():
    rng = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (2, 70, 101, 3), dtype=torch.uint8, generator=rng)
    package = PaddedPackage(_strict_package(8), multiple=8, min_side=MIN_SIDE)
    labels, confidence = package(frames)
    expected_labels, expected_confidence = _graph(frames)
    assert labels.shape == (2, 70, 101) and labels.is_contiguous()
    torch.testing.assert_close(labels, expected_labels)
    torch.testing.assert_close(confidence, expected_confidence)
    # the padding repeats the edge, as the graph's own replicate padding does
    seen = []
    PaddedPackage(lambda x: seen.append(x) or _graph(x), 8, MIN_SIDE)(frames)
    nchw = frames.permute(0, 3, 1, 2).float()
    replicate = F.pad(nchw, (0, 3, 0, 2), mode="replicate").permute(0, 2, 3, 1)
    torch.testing.assert_close(seen[0].float(), replicate)


def test_frames_already_at_a_multiple_go_straight_through():
    frames = torch.zeros(1, 64, 128, 3, dtype=torch.uint8)
    seen = []
    PaddedPackage(lambda x: seen.append(x) or _graph(x), 8, MIN_SIDE)(frames)
    assert seen[0] is frames


def test_small_frames_run_the_eager_graph_or_say_what_the_package_takes():
    small = torch.zeros(1, 32, 200, 3, dtype=torch.uint8)
    eager_calls = []

    def eager():
        eager_calls.append(True)
        return _graph

    package = PaddedPackage(_strict_package(8), 8, MIN_SIDE, fallback=eager)
    labels, _ = package(small)
    assert labels.shape == (1, 32, 200) and eager_calls
    with pytest.raises(ValueError, match="sides of at least 64"):
        PaddedPackage(_strict_package(8), 8, MIN_SIDE)(small)


def test_a_package_without_a_stride_takes_frames_as_they_are():
    digits = torch.zeros(5, 28, 28, 3, dtype=torch.uint8)  # the digit classifier's package
    seen = []
    PaddedPackage(lambda x: seen.append(x) or _graph(x), 0, 0)(digits)
    assert seen[0] is digits


def test_the_package_example_is_the_frame_size_it_is_tuned_for_rounded_to_the_stride():
    """`export --compile-size 2050x1000`: Inductor tunes for the example's sizes, so the example
    is that frame, rounded up to the network's stride (and within the package's range)."""
    from types import SimpleNamespace

    from cycada.export.compiled import _package_input

    segmenter = SimpleNamespace(kind="segment", multiple=8, in_channels=3)
    example, shapes = _package_input(segmenter, (2050, 1000))
    assert tuple(example.shape) == (2, 1000, 2056, 3)
    small, _ = _package_input(segmenter, (10, 10))
    assert tuple(small.shape) == (2, MIN_SIDE, MIN_SIDE, 3)
    default, _ = _package_input(segmenter)
    assert tuple(default.shape) == (2, 64, 72, 3)
