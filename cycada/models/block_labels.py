"""Full-resolution labels and confidence from a segmenter's coarse class scores, without
upsampling every class: the post-processing of the CPU serving graph.

Upsampling the scores bilinearly (``align_corners=False``) by the network's stride ``s`` gives
each pixel a convex combination of the scores of four coarse cells; the pixels that share
their four cells form an s×s *block* (the grid is offset by s/2; edge cells are repeated, as
the interpolation clamps there). Within a block:

* if one class leads at all four corners, it leads at every pixel (each pixel's score gap is
  a convex combination of non-negative gaps);
* a class that trails the block's two best classes by more than ``MARGIN`` at every corner
  cannot win any pixel and moves its softmax by under ``exp(-MARGIN)`` per class, so labels and
  confidence need only the *lead* of the first class over the second, one channel upsampled;
* the other blocks (three or more classes within reach: junctions, unsure regions, about 1 %
  of a dashcam frame's blocks) are computed with every class, exactly, and scattered in.

The two classes' lower bound at a pixel is the best of: the first's lowest corner, the
second's lowest corner, half the lowest corner sum (each pixel's best of two is at least their
mean). With ``MARGIN`` 9 the confidence moves by under 0.6/255 and the labels not at all
(ties aside). A 960x540 frame costs ONNX Runtime on a CPU 1.16-1.18x the bare network, where
upsampling all 19 classes cost 1.8x; with every block exact (an untrained network) about 1.2x the
every-class graph (BENCHMARKS.md). The small tensors are worked with matrix products, pools
and gathers rather than elementwise ops broadcast along a short last axis, which ONNX Runtime
runs an element at a time.

Data-dependent shapes (the exact blocks) suit a CPU; GPU engines keep the dense form
(:class:`cycada.models.graphs.SegmentationGraph` without ``blocks``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MARGIN = 9.0  # logits below the two best classes at which a class no longer counts
NEVER = -1.0e4  # the score of a class added to a two-class segmenter's: it never counts


class BlockLabels(nn.Module):
    """Class scores (N, K, h, w) at ``stride`` → labels, confidence uint8 (N, height, width),
    as the plain definition (bilinear upsampling, softmax, argmax) gives them."""

    def __init__(self, stride: int):
        super().__init__()
        if stride < 2 or stride % 2:
            raise ValueError(f"block labels need an even output stride, not {stride}")
        self.stride = stride
        # a pixel's weight on its block's far row (or column): (offset + 0.5) / stride
        fraction = (torch.arange(stride, dtype=torch.float32) + 0.5) / stride
        rows = fraction[:, None].expand(stride, stride).reshape(-1)
        cols = fraction[None, :].expand(stride, stride).reshape(-1)
        weights = torch.stack(
            [(1 - rows) * (1 - cols), (1 - rows) * cols, rows * (1 - cols), rows * cols]
        )  # the four corners' weights of each pixel of a block
        # (2, s): a pixel's weights on the near and the far corner along one axis
        self.register_buffer("spread", torch.stack([1 - fraction, fraction]), persistent=False)
        self.register_buffer("ones", torch.ones(1, stride), persistent=False)
        self.register_buffer("corner_weights", weights.t().contiguous(), persistent=False)
        self.register_buffer("offsets", torch.arange(stride), persistent=False)
        self.register_buffer("corner_columns", torch.tensor([0, 1, 0, 1]), persistent=False)
        self.register_buffer("corner_rows", torch.tensor([0, 0, 1, 1]), persistent=False)

    def forward(
        self, scores: torch.Tensor, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cells, lead, pair, exact = self._blocks(scores)
        labels, confidence = self._two_classes(lead, pair)
        labels, confidence = self._every_class(cells, exact, labels, confidence)
        half = self.stride // 2
        return (
            labels[:, half : half + height, half : half + width],
            confidence[:, half : half + height, half : half + width],
        )

    def exact_share(self, scores: torch.Tensor) -> float:
        """The share of blocks computed with every class: about 1 % for a trained network on
        real frames, all of them for an untrained one (the graph's slowest case)."""
        return self._blocks(scores)[3].float().mean().item()

    def _blocks(self, scores: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per block of the coarse grid (N, h+1, w+1): the first class's lead over the second
        at the four corners (…, 4), those two classes (N, 2, …), and whether a third may count;
        with the padded cells (N, K, h+2, w+2) the exact blocks are computed from."""
        if scores.shape[1] < 3:  # classes that never count keep the shapes below
            scores = F.pad(scores, (0, 0, 0, 0, 0, 3 - scores.shape[1]), value=NEVER)
        # one constant per cell moves neither argmax nor softmax: each cell's best scores 0
        shifted = scores - scores.amax(1, keepdim=True)
        cells = F.pad(shifted, (1, 1, 1, 1), mode="replicate")  # (n, k, h+2, w+2)
        # each class's best corner: a 2x2 max pool (one pass; no corners stacked)
        top_values, top_classes = F.max_pool2d(cells, 2, 1).topk(3, dim=1)  # (n, 3, h+1, w+1)
        pair = top_classes[:, :2]
        # the two classes at each corner, gathered from that corner's own padding of the
        # scores (the same cells as a slice of ``cells``; OpenVINO mis-shapes a gather from a
        # slice of a pad)
        corners = [
            F.pad(shifted, (1 - column, column, 1 - row, row), mode="replicate").gather(1, pair)
            for row in (0, 1)
            for column in (0, 1)
        ]
        first = torch.stack([corner[:, 0] for corner in corners], -1)  # (n, h+1, w+1, 4)
        second = torch.stack([corner[:, 1] for corner in corners], -1)
        floor = torch.maximum(
            torch.maximum(first.amin(-1), second.amin(-1)), (first + second).amin(-1) * 0.5
        )
        exact = top_values[:, 2] - floor >= -MARGIN
        # the lead's corners laid (n, h+1, corner row, w+1, corner column) for _two_classes
        lead = (first - second).unflatten(-1, (2, 2)).transpose(2, 3)
        return cells, lead, pair, exact

    def _two_classes(
        self, lead: torch.Tensor, pair: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every block from its two best classes: the first's lead over the second at the
        corners (N, h+1, 2, w+1, 2: corner row, block column, corner column), interpolated along
        the rows, then down the columns, already in image order. Both steps, and each block's
        classes repeated across its s columns, are matrix products: elementwise ops that
        broadcast a short last axis, ONNX Runtime runs an element at a time."""
        s = self.stride
        n, h, w = lead.shape[0], lead.shape[1] - 1, lead.shape[3] - 1
        rows = (lead @ self.spread).reshape(n, h + 1, 2, (w + 1) * s)  # top and bottom rows
        pixel_lead = self.spread.t() @ rows  # (n, h+1, s, (w+1)*s)
        repeated = pair.float().unsqueeze(-1) @ self.ones  # (n, 2, h+1, w+1, s)
        classes = repeated.to(torch.uint8).reshape(n, 2, h + 1, 1, (w + 1) * s)
        size = (n, (h + 1) * s, (w + 1) * s)
        # the first class where it leads, else the second, as uint8 arithmetic on 0 or 1 (no
        # overflow): a third of the time of ONNX Runtime's Where, which broadcasts slowly
        leads = (pixel_lead >= 0).to(torch.uint8)
        labels = (leads * classes[:, 0] + (1 - leads) * classes[:, 1]).reshape(size)
        confidence = to_level(torch.sigmoid(pixel_lead.abs())).reshape(size)
        return labels, confidence

    def _every_class(
        self,
        cells: torch.Tensor,
        exact: torch.Tensor,
        labels: torch.Tensor,
        confidence: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The blocks where a third class may count, from every class's scores, written over
        the two-class results."""
        s = self.stride
        n, k, rows, columns = cells.shape
        image, block_row, block_column = exact.nonzero().unbind(1)  # (E,) each
        # (k, n*(h+2)*(w+2)): the cells are gathered, then laid classes last (not all of them)
        by_class = cells.transpose(0, 1).reshape(k, -1)
        first_cell = (image * rows + block_row) * columns + block_column
        offsets = self.corner_columns + self.corner_rows * columns  # the 4 corners' cells
        corners = by_class.index_select(1, (offsets.unsqueeze(1) + first_cell).reshape(-1))
        corners = corners.reshape(k, 4, -1).permute(1, 2, 0).reshape(4, -1)  # (4, E*k)
        # one (s*s, 4) x (4, E*k) product, not E small ones: (s*s, E, k)
        values = (self.corner_weights @ corners).reshape(s * s, -1, k)
        probability, winner = values.softmax(-1).max(-1)  # (s*s, E)
        # written a block row (s pixels) at a time: the images seen as (n, h+1, s, w+1, s)
        shape = labels.shape
        grid = (n, rows - 1, s, columns - 1, s)
        pixel_row = block_row.unsqueeze(1) * 0 + self.offsets  # (E, s); 0 blocks stay (0, s)
        where = tuple(index.unsqueeze(1).expand_as(pixel_row) for index in (image, block_row)) + (
            pixel_row,
            block_column.unsqueeze(1).expand_as(pixel_row),
        )
        rows_of = lambda x: x.t().reshape(-1, s, s)  # noqa: E731  (s*s, E) → (E, s, s)
        labels = labels.reshape(grid).index_put(where, rows_of(winner.to(torch.uint8)))
        confidence = confidence.reshape(grid).index_put(where, rows_of(to_level(probability)))
        return labels.reshape(shape), confidence.reshape(shape)


def to_level(probability: torch.Tensor) -> torch.Tensor:
    """A probability as the uint8 level 0..255 that the serving graphs return, rounded half
    up: the cast to uint8 truncates (in PyTorch, ONNX Runtime and OpenVINO alike), so adding
    0.5 first rounds. ONNX Runtime's Round goes an element at a time, its Add is vectorized."""
    return probability.mul(255.0).add(0.5).to(torch.uint8)
