"""Serving graphs: trained networks wrapped so that uint8 images go in and uint8 results come out.

Normalisation, padding to the network's stride, argmax and the conversion back to uint8 live
inside these modules, so the exported ONNX/TensorRT graphs need no Python pre- or
post-processing and a native Triton backend can serve them as they are.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from cycada.models.block_labels import BlockLabels, to_level
from cycada.models.endpoints import Endpoint
from cycada.models.transforms import fit_channels


def _to_unit_nchw(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) → float32 (N, C, H, W) in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom/right by edge replication so height and width are multiples of ``multiple``."""
    height, width = x.shape[-2], x.shape[-1]
    pad_h = (multiple - height % multiple) % multiple
    pad_w = (multiple - width % multiple) % multiple
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


class SegmentationGraph(nn.Module):
    """uint8 (N, H, W, 3) → labels uint8 (N, H, W), confidence uint8 (N, H, W) [, scores].

    Confidence is the winning class's softmax probability scaled to 0..255. ``logits`` adds the
    network's class scores at its output stride (N, K, H/s, W/s), for the parity checks. The
    frame goes to the network's normalised input in one affine
    (:meth:`~cycada.models.segmenters.Segmenter.pixel_normalisation`).

    The result is :class:`PlainSegmentationGraph`'s, computed cheaply. With ``blocks`` (the CPU
    graph) only each block of the coarse grid's two best classes are upsampled
    (:mod:`cycada.models.block_labels`). Without (the GPU graphs, whose engines want static
    shapes) every class is: each coarse position's scores are shifted so that its best class
    scores 0 before upsampling (one constant per pixel moves neither the argmax nor the
    softmax, and exp then needs no max pass at full resolution); the upsampled scores are
    reduced with the classes last, along contiguous memory; the padding is cropped from the
    uint8 results rather than from every class's float scores.
    """

    def __init__(
        self,
        segmenter: nn.Module,
        multiple: int,
        half: bool = False,
        logits: bool = False,
        blocks: bool = False,
    ):
        super().__init__()
        self.segmenter, self.multiple = segmenter, multiple
        self.half, self.with_logits = half, logits
        self.block_labels = BlockLabels(segmenter.output_stride) if blocks else None
        self.register_buffer("mean", torch.zeros(3), persistent=False)
        self.register_buffer("variance", torch.ones(3), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        scale, shift = self.segmenter.pixel_normalisation()
        x = images.permute(0, 3, 1, 2).float()
        # x·scale + shift per channel as an inference batch norm (mean 0, variance 1, no
        # epsilon: exactly that affine): one pass in ONNX Runtime, where Mul and Add take two
        x = F.batch_norm(x, self.mean, self.variance, scale.float(), shift.float(), eps=0.0)
        height, width = x.shape[-2], x.shape[-1]
        x = _pad_to_multiple(x, self.multiple)
        if self.half:
            x = x.half()
        scores = self.segmenter.normalised_score_maps(x).float()
        if self.block_labels is not None:
            outputs = self.block_labels(scores, height, width)
        else:
            outputs = self._every_class(scores, x.shape[-2:], height, width)
        return (*outputs, scores) if self.with_logits else outputs

    def _every_class(
        self, scores: torch.Tensor, size: torch.Size, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        shifted = scores - scores.amax(1, keepdim=True)
        full = F.interpolate(shifted, size=size, mode="bilinear", align_corners=False)
        full = full.permute(0, 2, 3, 1)  # reduced along contiguous classes
        top, labels = full.max(-1)
        # every pixel's best class is within the interpolation of zeros, so exp(top) stays far
        # above float32's range end for any trained network; the floor only keeps 0/0 out
        sums = torch.exp(full).sum(-1).clamp_min(torch.finfo(torch.float32).tiny)
        confidence = to_level(torch.exp(top).div(sums))
        return labels.to(torch.uint8)[:, :height, :width], confidence[:, :height, :width]


class PlainSegmentationGraph(nn.Module):
    """The definition :class:`SegmentationGraph` computes, written plainly (full-resolution
    scores, softmax over the classes): the reference of the export's parity checks."""

    def __init__(self, segmenter: nn.Module, multiple: int):
        super().__init__()
        self.segmenter, self.multiple = segmenter, multiple

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = _to_unit_nchw(images)
        height, width = x.shape[-2], x.shape[-1]
        logits = self.segmenter(_pad_to_multiple(x, self.multiple))[:, :, :height, :width]
        confidence, labels = logits.float().softmax(1).max(1)
        return labels.to(torch.uint8), to_level(confidence)


class TranslationGraph(nn.Module):
    """uint8 (N, H, W, C_in) → translated uint8 (N, H, W, C_out), any H and W."""

    def __init__(self, generator: nn.Module, multiple: int, half: bool = False):
        super().__init__()
        self.generator, self.multiple, self.half = generator, multiple, half

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = _to_unit_nchw(images)
        height, width = x.shape[-2], x.shape[-1]
        x = _pad_to_multiple(x, self.multiple)
        if self.half:
            x = x.half()
        y = self.generator(x).float().mul(127.5).add(127.5).round().clamp(0.0, 255.0)
        # the padding is cropped from the uint8 image, not from the float one
        return y.to(torch.uint8).permute(0, 2, 3, 1)[:, :height, :width]


class DigitGraph(nn.Module):
    """uint8 (N, H, W, C) digits → class ids uint8 (N, 1), probabilities float32 (N, K) [, logits].

    The network's own input fitting (grey↔RGB, resize to its input size) runs in the graph, so
    any digit image size is accepted. C must be the channel count fixed at export.
    """

    def __init__(self, task_net: nn.Module, half: bool = False, logits: bool = False):
        super().__init__()
        self.task_net, self.half, self.with_logits = task_net, half, logits

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = fit_channels(_to_unit_nchw(images), self.task_net.in_channels)
        size = (self.task_net.in_size, self.task_net.in_size)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)  # identity at size
        if self.half:
            x = x.half()
        logits = self.task_net.classifier(self.task_net.encode(x)).float()
        probabilities = logits.softmax(1)
        class_ids = probabilities.argmax(1, keepdim=True).to(torch.uint8)
        outputs = (class_ids, probabilities)
        return (*outputs, logits) if self.with_logits else outputs


def serving_graph(
    endpoint: Endpoint, half: bool = False, logits: bool = False, blocks: bool = False
) -> nn.Module:
    """The uint8-in/uint8-out module of an endpoint (``logits`` adds a float output for checks;
    a segmentation's ``blocks`` upsamples two classes a block, the CPU's form, else every
    class)."""
    network = copy.deepcopy(endpoint.network).eval()
    if half:
        network = network.half()
    if endpoint.kind == "segment":
        graph = SegmentationGraph(network, endpoint.multiple, half, logits, blocks)
        return graph.eval()
    if endpoint.kind == "translate":
        return TranslationGraph(network, endpoint.multiple, half).eval()
    return DigitGraph(network, half, logits).eval()
