"""CUDA graphs for the fixed shapes a video uses: one graph per input shape, captured on first use.

A video sends frames of one size, and the batcher groups them into a few batch sizes, so a
serving instance sees a handful of shapes. Replaying a captured graph launches every kernel of
the network in one call instead of one Python call per layer, which pays where launches, not
the kernels, set the pace (small frames, small batches). Shapes past ``max_graphs`` run the
plain graph, so an unusual size never costs a capture.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

LOGGER = logging.getLogger("cycada.serving")


class CudaGraphRunner:
    """``runner(batch)`` → the outputs of ``graph(batch)``, replayed from a CUDA graph captured
    for ``batch``'s shape and dtype. The outputs are the graph's own buffers: read them (copy to
    the host) before the next call, as the serving engine does. Not thread-safe: one per
    serving instance."""

    def __init__(self, graph: Callable[[Any], Any], max_graphs: int = 16, warmup: int = 2):
        # only the engine that runs needs it: the NumPy-only backend stub imports this module
        import torch

        self.torch, self.graph = torch, graph
        self.max_graphs, self.warmup = max_graphs, warmup
        self.captured: dict[tuple, tuple[Any, Any, Any]] = {}
        self.failed: set[tuple] = set()
        self.pool = None  # one memory pool for every graph: they never run at the same time

    def __call__(self, batch):
        key = (tuple(batch.shape), batch.dtype, batch.device)
        entry = self.captured.get(key)
        if entry is None:
            if key in self.failed or len(self.captured) >= self.max_graphs:
                return self.graph(batch)
            entry = self._capture(key, batch)
            if entry is None:
                return self.graph(batch)
        cuda_graph, static_input, static_output = entry
        static_input.copy_(batch, non_blocking=True)
        cuda_graph.replay()
        return static_output

    def _capture(self, key: tuple, batch):
        torch = self.torch
        static_input = batch.clone()
        try:
            # warm-up on a side stream (cuDNN's algorithm search and lazy set-up run here, not
            # inside the capture), then capture one call
            side = torch.cuda.Stream(device=batch.device)
            side.wait_stream(torch.cuda.current_stream(batch.device))
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self.graph(static_input)
            torch.cuda.current_stream(batch.device).wait_stream(side)
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            cuda_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(cuda_graph, pool=self.pool):
                static_output = self.graph(static_input)
        except Exception as exc:  # an op that cannot be captured: this shape runs uncaptured
            self.failed.add(key)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            LOGGER.warning(f"CUDA graph for shape {key[0]} not captured ({first}); runs plain")
            torch.cuda.synchronize(batch.device)
            return None
        self.captured[key] = (cuda_graph, static_input, static_output)
        return self.captured[key]
