"""What one training step of a segmentation stage needs of its run: the device, mixed
precision, the input layout and, under torchrun, the gradient averaging. A run
(:class:`~cycada.training.segmentation.run.SegRun`) is one; :class:`LocalStepContext` is one on
its own, for the benchmarks that time the stages' real steps without a run folder."""

from __future__ import annotations

import contextlib

import torch

from cycada.training.core.distributed import Distributed


def to_input(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 (N, 3, H, W) → float in [-1, 1] on ``device``."""
    x = images.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class StepContext:
    device: torch.device
    dist: Distributed
    amp: bool  # fp16 autocast on CUDA
    channels_last: bool  # channels-last tensors on CUDA

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.cuda and self.amp:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def input(self, images: torch.Tensor) -> torch.Tensor:
        return to_input(images, self.device, self.cuda and self.channels_last)

    def sync_gradients(self, *modules: torch.nn.Module) -> None:
        """Average gradients over the data-parallel processes (no-op in a single process)."""
        self.dist.average_gradients(modules)


class LocalStepContext(StepContext):
    """One process on ``device``, with the run defaults (fp16 and channels-last on CUDA)."""

    def __init__(self, device: torch.device, amp: bool = True, channels_last: bool = True):
        self.device, self.amp, self.channels_last = device, amp, channels_last
        self.dist = Distributed()
