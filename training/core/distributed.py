"""Data-parallel training under ``torchrun``: the same command, one process per GPU.

    torchrun --nproc_per_node 4 -m cycada.cli train seg --source gta5 --target cityscapes ...

Every process builds the same networks (same seed), draws its own random batches (the data
seed is offset by the rank), and averages gradients with all-reduce before each optimizer step,
so the replicas stay identical; the effective batch is ``batch_size x world size``. Rank 0 alone
writes checkpoints, resume states, logs, evaluations and the translated data set; the others
wait at a barrier and then check that their weights equal what rank 0 saved (beside a resume
state each also writes what only it has: its place in its batch order, its random states,
pools and batch-norm statistics). NCCL on GPUs, gloo on CPUs (which is how the tests run it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Distributed:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, value: float) -> float:
        """The mean of a number over all processes (decisions that must agree, like a gate)."""
        if not self.enabled:
            return value
        tensor = torch.tensor([float(value)], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            tensor = tensor.cuda()
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def average_gradients(self, modules: Iterable[nn.Module]) -> None:
        """All-reduce (mean) the gradients of ``modules``, one flat buffer per dtype/device."""
        if not self.enabled:
            return
        grads = [
            p.grad
            for m in modules
            for p in m.parameters()
            if p.requires_grad and p.grad is not None
        ]
        buckets: dict[tuple, list[torch.Tensor]] = {}
        for grad in grads:
            buckets.setdefault((grad.dtype, grad.device), []).append(grad)
        for bucket in buckets.values():
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            flat /= self.world_size
            offset = 0
            for grad in bucket:
                grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
                offset += grad.numel()

    def average_buffers(self, modules: Iterable[nn.Module]) -> None:
        """Average floating-point buffers (batch-norm running statistics, which each process
        gathers from its own batches) so every replica saves the same network."""
        if not self.enabled:
            return
        for module in modules:
            for buffer in module.buffers():
                if buffer.is_floating_point():
                    dist.all_reduce(buffer)
                    buffer /= self.world_size


def init_distributed(device: str) -> Distributed:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK); single process
    otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Distributed(world_size, rank, local_rank)


def same_weights(modules: dict[str, nn.Module], stored: dict[str, torch.Tensor]) -> list[str]:
    """Names of tensors in ``modules`` that differ from ``stored`` (``<module>.<param>`` keys)."""
    differing = []
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            saved = stored.get(f"{name}.{key}")
            if saved is None or not torch.allclose(
                value.detach().cpu().float(), saved.float(), rtol=1e-5, atol=1e-6
            ):
                differing.append(f"{name}.{key}")
    return differing
