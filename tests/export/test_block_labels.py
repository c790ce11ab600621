"""The CPU serving graph's post-processing (two classes a block, the rest exactly) against the
plain definition, in PyTorch and as ONNX Runtime and OpenVINO run its export."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cycada.models.block_labels import BlockLabels
from cycada.models.endpoints import Endpoint
from cycada.models.graphs import SegmentationGraph
from cycada.models.segmenters import Segmenter, build_segmenter

STRIDE = 8


def plain(scores: torch.Tensor, height: int, width: int):
    """The definition: every class upsampled, softmax, the best; with each pixel's top-2 gap."""
    full = F.interpolate(scores, scale_factor=STRIDE, mode="bilinear", align_corners=False)
    full = full[:, :, :height, :width]
    top2 = full.topk(2, dim=1).values
    confidence, labels = full.softmax(1).max(1)
    level = confidence.mul(255.0).round().to(torch.uint8)
    return labels.to(torch.uint8), level, top2[:, 0] - top2[:, 1]


def regions(classes: int = 19, seed: int = 0) -> torch.Tensor:
    """Scores of a trained network's shape: two classes within reach almost everywhere (stripes
    of one crossing stripes of another, so blocks meet at junctions), the rest far below."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(2, classes, 40, 70, generator=generator) - 40
    rows, columns = torch.meshgrid(torch.arange(40), torch.arange(70), indexing="ij")
    for index in ((columns // 9 + seed) % classes, (rows // 6 + 3) % classes):
        lift = 40 + 3 * torch.randn(2, 1, 40, 70, generator=generator)
        scores.scatter_add_(1, index.expand(2, 1, 40, 70), lift)
    return scores


@pytest.mark.parametrize(
    "layout,exact_share",
    [
        ("regions", (0.05, 0.5)),  # both paths
        ("flat", (0.99, 1.0)),  # every class within reach: every block exact
        ("one class", (0.0, 0.0)),  # no block needs every class
        ("two classes", (0.0, 0.0)),  # a two-class segmenter
    ],
)
def test_block_labels_equal_the_plain_definition(layout, exact_share):
    height, width = 317, 555  # cropped inside the last blocks, both ways
    if layout == "regions":
        scores = regions()
    elif layout == "flat":
        scores = torch.randn(2, 19, 40, 70, generator=torch.Generator().manual_seed(1))
    elif layout == "one class":
        scores = torch.full((2, 19, 40, 70), -30.0)
        scores[:, 4] = 5.0 + torch.rand(2, 40, 70)
    else:
        scores = torch.randn(2, 2, 40, 70, generator=torch.Generator().manual_seed(2)) * 4
    low, high = exact_share
    assert low <= BlockLabels(STRIDE).exact_share(scores) <= high
    labels, confidence = BlockLabels(STRIDE)(scores, height, width)
    want_labels, want_confidence, gap = plain(scores, height, width)
    assert labels.shape == confidence.shape == (2, height, width)
    assert labels.dtype == confidence.dtype == torch.uint8
    tie = gap < 1e-4
    assert torch.equal(labels[~tie], want_labels[~tie])
    assert (confidence.int() - want_confidence.int()).abs().max() <= 1


def test_an_odd_stride_is_refused():
    with pytest.raises(ValueError, match="even output stride"):
        BlockLabels(7)


def _segmenter():
    net = build_segmenter("fastscnn", 19).eval()
    torch.manual_seed(0)
    for p in net.classifier[-1].parameters():  # spread the class scores like a trained head
        p.data.normal_(0, 3)
    return net


def test_the_block_graph_equals_the_plain_one_on_frames_of_any_size():
    net = _segmenter()
    blocks = SegmentationGraph(net, net.output_stride, blocks=True).eval()
    dense = SegmentationGraph(net, net.output_stride).eval()
    for height, width in ((37, 61), (1, 9), (64, 64)):
        images = torch.randint(0, 256, (2, height, width, 3), dtype=torch.uint8)
        with torch.no_grad():
            (labels, confidence), (want_labels, want_confidence) = blocks(images), dense(images)
        assert labels.shape == (2, height, width)
        assert (labels == want_labels).float().mean() >= 0.999
        assert (confidence.int() - want_confidence.int()).abs().max() <= 1


class CoarseScores(Segmenter):
    """A segmenter in shape only (scores at stride 8 from a pooled frame): exports in seconds."""

    output_stride = STRIDE

    def __init__(self):
        super().__init__()
        self.input_scale.fill_(1.0)  # no ImageNet statistics: the head sees [-1, 1]
        self.input_shift.fill_(0.0)
        # classes 0, 1, 2 follow the red, green and blue of a cell (blue handicapped), the
        # other 16 far below: blocks of two classes and blocks where a third counts
        self.head = nn.Conv2d(3, 19, 1)
        self.head.weight.data.zero_()
        self.head.bias.data.fill_(-60.0)
        for colour in range(3):
            self.head.weight.data[colour, colour] = 40.0
        self.head.bias.data[:3] = torch.tensor([0.0, 0.0, -20.0])

    def normalised_score_maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.avg_pool2d(x, STRIDE))


def test_onnx_runtime_and_openvino_run_the_exported_block_graph_as_pytorch_does(tmp_path):
    """Exported as ``cycada export`` writes model.onnx; a frame whose blocks all take the
    two-class path (no block computed exactly: empty tensors in the graph) included."""
    from cycada.export.onnx_export import export_onnx
    from cycada.export.parity import onnx_runner

    net = CoarseScores().eval()
    endpoint = Endpoint("segment", "segment", net, STRIDE, 3)
    path = export_onnx(endpoint, tmp_path / "model.onnx", cache=False, blocks=True)
    graph = SegmentationGraph(net, STRIDE, logits=True, blocks=True).eval()
    generator = torch.Generator().manual_seed(3)
    tiles = torch.randint(0, 256, (2, 6, 9, 3), dtype=torch.uint8, generator=generator)
    noise = tiles.repeat_interleave(16, 1).repeat_interleave(16, 2)[:, :83, :131].contiguous()
    flat = torch.tensor([200, 90, 30], dtype=torch.uint8).expand(1, 48, 80, 3).contiguous()
    runners = {"onnxruntime": onnx_runner(path, threads=1)}
    if importlib.util.find_spec("openvino") is not None:
        from cycada.serving.engines import OpenVinoEngine

        engine = OpenVinoEngine(path, "f32", 1)
        runners["openvino"] = lambda batch: engine.run(batch, engine.outputs)
    for images, share in ((noise, (0.01, 0.9)), (flat, (0.0, 0.0))):
        with torch.no_grad():
            *want, scores = (t.numpy() for t in graph(images))
        low, high = share
        assert low <= BlockLabels(STRIDE).exact_share(torch.from_numpy(scores)) <= high
        for name, run in runners.items():
            labels, confidence = (np.asarray(a) for a in run(images.numpy()))
            assert (labels == want[0]).mean() >= 0.999, name
            assert np.abs(confidence.astype(int) - want[1]).max() <= 1, name
