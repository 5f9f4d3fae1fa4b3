"""Rounds of optimizer updates, resumable between any two updates.

A round takes ``algorithm.batches_per_round`` micro-batches from the data stream and
turns them into ``algorithm.updates(batches)``: offline, one update of those batches;
online, a rollout and then several updates on it. The updates a round has still to make
are part of the training state: a checkpoint taken inside a round stores them, so the
resumed run finishes the round on the same rollout before it draws the next batches.
"""
from __future__ import annotations

import torch

from .batches import BatchStream


class UpdateStream:
    """Endless optimizer updates, each a list of device micro-batches to accumulate."""

    def __init__(self, algorithm, stream: BatchStream):
        self.algorithm, self.stream = algorithm, stream
        self.pending: list[list[dict]] = []

    def next(self) -> list[dict]:
        """The next update's micro-batches; a new round (data, rollout) when the last one's are used up."""
        while not self.pending:
            batches = [self.algorithm.to_device(self.stream.next()) for _ in range(self.algorithm.batches_per_round)]
            self.pending = self.algorithm.run(self.algorithm.updates, batches)
        return self.pending.pop(0)

    def state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """The round's pending updates as ``(json, tensors)``; both empty at a round boundary.

        Each distinct micro-batch is stored once (GRPO's iterations share theirs): its
        tensors as ``<i>.<key>`` on the CPU, its other values (rollout metrics, token
        counts) in ``json["micro_batches"][i]``; ``json["updates"]`` lists each update's
        micro-batch indices.
        """
        index: dict[int, int] = {}
        distinct = []
        for micro_batch in (m for update in self.pending for m in update):
            if id(micro_batch) not in index:
                index[id(micro_batch)] = len(distinct)
                distinct.append(micro_batch)
        tensors = {f"{i}.{key}": value.detach().cpu().clone(memory_format=torch.contiguous_format)
                   for i, micro_batch in enumerate(distinct)
                   for key, value in micro_batch.items() if isinstance(value, torch.Tensor)}
        values = [{k: v for k, v in m.items() if not isinstance(v, torch.Tensor)} for m in distinct]
        updates = [[index[id(m)] for m in update] for update in self.pending]
        return {"updates": updates, "micro_batches": values}, tensors

    def restore(self, state: dict, tensors: dict[str, torch.Tensor]) -> None:
        """Continue the round ``state()`` described (``{}``: start the next round)."""
        distinct = [dict(values) for values in state.get("micro_batches", [])]
        for name, tensor in tensors.items():
            i, key = name.split(".", 1)
            distinct[int(i)][key] = tensor
        distinct = [self.algorithm.to_device(m) for m in distinct]
        self.pending = [[distinct[i] for i in update] for update in state.get("updates", [])]
