"""Precomputed reference logps: one no-grad pass of the reference over the dataset, stored as columns."""
from __future__ import annotations

import math
from functools import partial
from typing import Callable

import datasets
import torch
import torch.distributed as dist

from ..kernels import linear_logprobs
from ..kernels.losses.sequence import completion_mask, pairwise_sequence_logps
from .batches import fixed_batches

REFERENCE_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


def _collate_with_columns(rows: list[dict], collate: Callable, columns: tuple[str, ...]) -> dict:
    batch = collate([{k: v for k, v in row.items() if k not in columns} for row in rows])
    for name in columns:
        batch[name] = torch.tensor([row[name] for row in rows], dtype=torch.float32)
    return batch


def collate_with_columns(collate: Callable, columns: tuple[str, ...] = REFERENCE_COLUMNS) -> Callable:
    """Wrap ``collate`` so the per-row float ``columns`` become ``[B]`` fp32 tensors of the batch."""
    return partial(_collate_with_columns, collate=collate, columns=columns)


def add_reference_logps(algorithm, rows: datasets.Dataset, collate: Callable, batch_size: int) -> datasets.Dataset:
    """``rows`` with ``ref_chosen_logps`` / ``ref_rejected_logps`` (summed over completion tokens, LD-DPO's way
    under ``ld_alpha``) added.

    ``algorithm`` provides ``to_device``, ``reference_forward`` and ``softcap`` (a pairwise algorithm:
    each batch stacks its chosen rows before its rejected rows). Data parallel, each rank
    computes a contiguous share of the rows and the ranks exchange their results; every rank runs as many
    batches as the first (a rank with a shorter share repeats the first rows and drops the result), so a
    sharded reference, whose layers gather their weights from every rank, computes in step.
    """
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    share = math.ceil(len(rows) / world_size)
    mine = range(rank * share, min(len(rows), (rank + 1) * share))
    batches = fixed_batches(rows.select(mine), batch_size, collate)
    rounds = math.ceil(share / batch_size)
    if len(batches) < rounds:
        batches += fixed_batches(rows.select(range(min(batch_size, len(rows)))), batch_size, collate) * rounds
    logps: list[tuple[float, float]] = []
    for i in range(rounds):
        batch = algorithm.to_device(batches[i])
        hidden, weight, bias = algorithm.reference_forward(batch)
        with torch.no_grad():
            token_logps = linear_logprobs(hidden, weight, batch["labels"], bias=bias, softcap=algorithm.softcap,
                                          backend=algorithm.config.kernel_backend)
        sequence = pairwise_sequence_logps(token_logps, completion_mask(batch["labels"]),
                                           algorithm.config.ld_alpha).cpu().tolist()
        half = len(sequence) // 2
        logps += zip(sequence[:half], sequence[half:])
    logps = logps[:len(mine)]  # this rank's rows, not the stand-ins
    if world_size > 1:
        shares: list = [None] * world_size
        dist.all_gather_object(shares, logps)
        logps = [pair for share_logps in shares for pair in share_logps]
    chosen, rejected = zip(*logps)
    return rows.add_column(REFERENCE_COLUMNS[0], list(chosen)).add_column(REFERENCE_COLUMNS[1], list(rejected))
