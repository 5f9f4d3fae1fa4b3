"""Deterministic, resumable micro-batch stream over a tokenised dataset."""
from __future__ import annotations

from typing import Callable, Sequence

import torch


class BatchStream:
    """Yields collated micro-batches of ``batch_size`` rows, reshuffled each epoch from ``seed + epoch``.

    Data parallel, every rank walks the same order in global batches of
    ``batch_size * world_size`` rows and takes slice ``rank`` of each. The position
    (``epoch``, ``index``) is all the state there is, so a resumed run sees exactly
    the batches an uninterrupted one would. Incomplete tail batches are dropped
    (pairwise and KTO losses need full batches).
    """

    def __init__(self, rows: Sequence, batch_size: int, collate: Callable, seed: int, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1):
        if len(rows) < batch_size * world_size:
            raise ValueError(f"micro_batch_size: {batch_size} rows on each of {world_size} ranks is more than the "
                             f"dataset ({len(rows)} rows)")
        self.rows, self.batch_size, self.collate = rows, batch_size, collate
        self.seed, self.shuffle = seed, shuffle
        self.rank, self.global_size = rank, batch_size * world_size
        self.epoch, self.index = 0, 0
        self._order = self._permutation(0)

    @property
    def batches_per_epoch(self) -> int:
        """Global batches (one micro-batch on every rank) per epoch."""
        return len(self.rows) // self.global_size

    def _permutation(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.rows)))
        gen = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(len(self.rows), generator=gen).tolist()

    def state(self) -> dict:
        """Position to store in a checkpoint."""
        return {"epoch": self.epoch, "index": self.index}

    def restore(self, state: dict) -> None:
        """Continue from a position returned by ``state``."""
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self._permutation(self.epoch)

    def next(self) -> dict:
        """The next collated micro-batch, starting a new epoch when this one is used up."""
        if self.index + self.global_size > len(self.rows):
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        start = self.index + self.rank * self.batch_size
        picked = self._order[start:start + self.batch_size]
        self.index += self.global_size
        return self.collate([self.rows[i] for i in picked])


def fixed_batches(rows: Sequence, batch_size: int, collate: Callable, min_rows: int = 1) -> list[dict]:
    """Every row once, in order, in batches of ``batch_size`` (eval use). The last batch may be smaller; one
    smaller than ``min_rows`` (KTO needs 2) joins the batch before it, so no row is left out."""
    if 0 < len(rows) < min_rows:
        raise ValueError(f"{len(rows)} rows: batches here need at least {min_rows}")
    starts = list(range(0, len(rows), batch_size))
    if len(starts) > 1 and len(rows) - starts[-1] < min_rows:
        starts.pop()
    ends = starts[1:] + [len(rows)]
    return [collate([rows[i] for i in range(start, end)]) for start, end in zip(starts, ends)]
