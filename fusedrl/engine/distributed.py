"""Data parallelism across the processes ``torchrun`` starts: one rank per GPU, gradients summed over ranks.

Every rank holds the whole model and draws its own slice of each global batch
(``BatchStream`` with ``rank``/``world_size``). During the last backward of a step
the gradients are summed over ranks in flat buckets (``GradientSync``); each rank's
losses are scaled by the step's *global* weight, so the summed gradient is the
gradient of the global batch and the run matches one process with ``world_size``
times the micro-batch. A single process (no ``WORLD_SIZE`` > 1 in the environment) skips
every collective.
"""
from __future__ import annotations

import contextlib
import datetime
import gc
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

    def close(self) -> None:
        """Tear the process group down once every rank is here (none still in work of its own, such as rank 0
        writing the final model), after collecting garbage: a collective's work object left in a reference
        cycle would otherwise be freed during interpreter shutdown, where gloo aborts the process."""
        if self.active:
            dist.barrier()
            gc.collect()
            dist.destroy_process_group()

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
        return self._reduce(value, dist.ReduceOp.SUM)

    def max(self, value: float) -> float:
        """The largest ``value`` of any rank."""
        return self._reduce(value, dist.ReduceOp.MAX)

    def _reduce(self, value: float, op) -> float:
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=op)
        return float(tensor.item())

    def gather(self, items: list) -> list:
        """The concatenation of every rank's ``items`` (small Python values: metrics), in rank order."""
        if not self.active:
            return items
        parts: list = [None] * self.world_size
        dist.all_gather_object(parts, items)
        return [item for part in parts for item in part]

    def broadcast_parameters(self, model: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (random inits such as LoRA's and value heads differ).
        Tensors held elsewhere than ``device`` (CPU weights waiting to be sharded) pass through it one by one."""
        if not self.active:
            return
        with torch.no_grad():
            for tensor in list(model.parameters()) + list(model.buffers()):
                staged = tensor.data.to(self.device)
                dist.broadcast(staged, src=0)
                if staged is not tensor.data:
                    tensor.data.copy_(staged)


class GradientSync:
    """Sums a model's gradients over ranks while the step's last backward runs.

    Trainable parameters are grouped into buckets of one dtype and up to ``BUCKET_BYTES``, in reverse
    order (the backward reaches the last layers first). After ``start``, a hook on each parameter marks
    its gradient final; buckets launch their all-reduce asynchronously, strictly in bucket order, as soon
    as they and every bucket before them are final, so communication overlaps the rest of the backward and
    every rank issues the same collectives in the same order even when a parameter gets a gradient on one
    rank and none on another. ``finish`` launches the rest (a missing gradient counts as zeros), waits for
    all and writes the sums back; a parameter no rank had a gradient for is left without one, as a single
    process leaves it (AdamW then skips it). One rank, or not ``enabled`` (FSDP): both are no-ops.
    """

    def __init__(self, model: torch.nn.Module, ranks: Ranks, enabled: bool = True):
        self.active = ranks.active and enabled
        self.started = False
        if not self.active:
            return
        self.buckets: list[list[torch.nn.Parameter]] = []
        size = 0
        for p in reversed([p for p in model.parameters() if p.requires_grad]):
            nbytes = p.numel() * p.element_size()
            if not self.buckets or size + nbytes > BUCKET_BYTES or self.buckets[-1][0].dtype != p.dtype:
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(p)
            size += nbytes
        self.bucket_of = {id(p): i for i, bucket in enumerate(self.buckets) for p in bucket}
        for bucket in self.buckets:
            for p in bucket:
                p.register_post_accumulate_grad_hook(self._on_gradient)

    def start(self) -> None:
        """The next backward is the step's last: reduce each bucket as soon as its gradients are final."""
        if not self.active:
            return
        self.started = True
        self.missing: set[int] = set()  # parameters this rank had no gradient for (reduced as zeros)
        self.ready: list[set[int]] = [set() for _ in self.buckets]
        self.reductions: list[tuple[torch.Tensor, object]] = []  # one per launched bucket, in bucket order

    def _on_gradient(self, p: torch.nn.Parameter) -> None:
        if not self.started:
            return
        i = self.bucket_of[id(p)]
        if id(p) in self.ready[i]:
            raise RuntimeError("a gradient was accumulated twice in one backward (reentrant checkpointing?): "
                               "its bucket is already being summed over ranks")
        self.ready[i].add(id(p))
        while len(self.reductions) < len(self.buckets) and self._final(len(self.reductions)):
            self._launch_next()

    def _final(self, i: int) -> bool:
        return len(self.ready[i]) == len(self.buckets[i])

    def _launch_next(self) -> None:
        bucket = self.buckets[len(self.reductions)]
        for p in bucket:
            if p.grad is None:
                self.missing.add(id(p))
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in bucket])
        self.reductions.append((flat, dist.all_reduce(flat, async_op=True)))

    def finish(self) -> None:
        """Wait for every bucket's sum and write it back into ``.grad`` (all ranks end with equal gradients)."""
        if not self.active:
            return
        while len(self.reductions) < len(self.buckets):
            self._launch_next()
        params = [p for bucket in self.buckets for p in bucket]
        had_gradient = torch.tensor([id(p) not in self.missing for p in params], dtype=torch.float32,
                                    device=params[0].device)
        dist.all_reduce(had_gradient)
        for bucket, (flat, work) in zip(self.buckets, self.reductions):
            work.wait()
            offset = 0
            for p in bucket:
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
                offset += p.numel()
        for p, count in zip(params, had_gradient.tolist()):
            if not count:
                p.grad = None
        self.started = False
        self.reductions = []


def pick_device() -> torch.device:
    """The GPU when there is one (the current CUDA device), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def launched_world_size() -> int:
    """How many ranks ``torchrun`` started (1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's rank as ``torchrun`` set it (0 without it)."""
    return int(os.environ.get("RANK", "0"))


def init_ranks() -> Ranks:
    """The process group from ``torchrun``'s environment (NCCL on GPUs, gloo on CPU), or a single rank."""
    world_size = launched_world_size()
    if world_size == 1:
        return Ranks(device=pick_device())
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():  # rank 0 saves checkpoints while the others wait: allow it half an hour
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return Ranks(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)
