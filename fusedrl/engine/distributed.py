"""Data parallelism across the processes ``torchrun`` starts: one rank per GPU, gradients averaged.

Every rank holds the whole model and draws its own slice of each global batch
(``BatchStream`` with ``rank``/``world_size``). After the micro-batches of a step,
the gradients are summed over ranks in flat buckets; each rank's losses are
scaled by the step's *global* weight, so the summed gradient is the gradient of
the global batch and the run matches one process with ``world_size`` times the
micro-batch. A single process (no ``WORLD_SIZE`` > 1 in the environment) skips
every collective.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

BUCKET_BYTES = 64 * 2**20


@dataclass
class Ranks:
    """This process's place in the run: ``rank`` of ``world_size``, on ``device``."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (it fills the caches: tokenised data, downloads), then the others."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def sum(self, value: float) -> float:
        """``value`` summed over ranks."""
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor.item())

    def gather(self, items: list) -> list:
        """The concatenation of every rank's ``items`` (small Python values: metrics), in rank order."""
        if not self.active:
            return items
        parts: list = [None] * self.world_size
        dist.all_gather_object(parts, items)
        return [item for part in parts for item in part]

    def sum_gradients(self, model: torch.nn.Module) -> None:
        """Sum the gradients of ``model``'s trainable parameters over ranks (a missing one counts as zeros)."""
        if not self.active:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for bucket in _buckets(params):
            flat = torch.cat([p.grad.reshape(-1) for p in bucket])
            dist.all_reduce(flat)
            offset = 0
            for p in bucket:
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
                offset += p.numel()

    def broadcast_parameters(self, model: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (random inits such as LoRA's and value heads differ)."""
        if not self.active:
            return
        with torch.no_grad():
            for tensor in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(tensor.data, src=0)


def _buckets(params: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Consecutive parameters of one gradient dtype, up to ``BUCKET_BYTES`` per bucket."""
    buckets: list[list[torch.Tensor]] = []
    size = 0
    for p in params:
        nbytes = p.grad.numel() * p.grad.element_size()
        if not buckets or size + nbytes > BUCKET_BYTES or buckets[-1][0].grad.dtype != p.grad.dtype:
            buckets.append([])
            size = 0
        buckets[-1].append(p)
        size += nbytes
    return buckets


def pick_device() -> torch.device:
    """The GPU when there is one (the current CUDA device), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def init_ranks() -> Ranks:
    """The process group from ``torchrun``'s environment (NCCL on GPUs, gloo on CPU), or a single rank."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Ranks(device=pick_device())
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return Ranks(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)
