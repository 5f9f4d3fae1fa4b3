"""Reductions over completion tokens, written once for every loss.

Token tensors are ``[B, T]`` with a boolean ``mask`` that marks completion tokens
(``labels != ignore_index``). Every reduction accumulates in fp32 and ignores
whatever the masked-out entries hold.
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

_STAND_IN = False  # inside ``stand_in()``: this rank's values count as nothing in cross-rank sums


def completion_mask(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """``[B, T]`` bool: True where ``labels [B, T]`` holds a completion token (not ``ignore_index``)."""
    return labels != ignore_index


def completion_lengths(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """``[B]`` int64: completion tokens per row of ``labels [B, T]``."""
    return completion_mask(labels, ignore_index).sum(-1)


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """fp32 sum of ``values`` where ``mask`` is True, over ``dim`` (every element when None)."""
    kept = torch.where(mask, values.float(), 0.0)
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """fp32 mean of ``values`` where ``mask`` is True, over ``dim`` (every element when None); 0 when empty."""
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True) -> torch.Tensor:
    """``(x - mean) / sqrt(var + 1e-8)`` over the masked entries (unbiased variance), fp32, same shape.

    With ``shift_mean=False`` the mean is added back: the scale changes, the mean does not.
    """
    mean = masked_mean(values, mask)
    centred = values.float() - mean
    var = masked_sum(centred.square(), mask) / (mask.sum() - 1).clamp(min=1)
    whitened = centred * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def sequence_logps(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` fp32 sequence logprobs: the sum of ``token_logps [B, T]`` over completion tokens."""
    return masked_sum(token_logps, mask, dim=-1)


def pairwise_sequence_logps(token_logps: torch.Tensor, mask: torch.Tensor, ld_alpha: float | None = None
                            ) -> torch.Tensor:
    """``[2B]`` fp32 sequence logprobs of a pairwise batch (``token_logps [2B, T]``, the B chosen rows first).

    With ``ld_alpha`` (LD-DPO, Liu et al. 2024; TRL's key) each pair's first ``min(|yc|, |yr|)`` completion
    tokens count fully and the longer reply's remaining tokens count ``ld_alpha`` times.
    """
    if ld_alpha is None:
        return sequence_logps(token_logps, mask)
    lengths = mask.sum(-1)
    pairs = lengths.shape[0] // 2
    shared = torch.minimum(lengths[:pairs], lengths[pairs:]).repeat(2)
    weights = torch.where(mask.cumsum(-1) <= shared[:, None], 1.0, ld_alpha)
    return masked_sum(token_logps.float() * weights, mask, dim=-1)


def token_mean_nll(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scalar fp32 NLL averaged over every completion token of the batch (``token_logps [B, T]``)."""
    return -masked_mean(token_logps, mask)


@contextlib.contextmanager
def stand_in():
    """Losses computed inside only keep a rank's collective calls in step with the others (a data-parallel rank
    with no evaluation batch left): their values add nothing to the sums ``global_sum_and_count`` takes."""
    global _STAND_IN
    _STAND_IN = True
    try:
        yield
    finally:
        _STAND_IN = False


def global_sum_and_count(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``(sum, count)`` of ``values`` (detached), summed over ranks when torch.distributed is initialised
    (zeros from this rank inside ``stand_in``)."""
    total = torch.stack([values.detach().float().sum(), values.new_tensor(values.numel(), dtype=torch.float32)])
    if _STAND_IN:
        total = torch.zeros_like(total)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
    return total[0], total[1]


def global_mean_and_std(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 mean and unbiased standard deviation of ``values`` (detached), over every rank's values when
    torch.distributed is initialised (statistics of the whole data-parallel batch, as TRL gathers it)."""
    total, count = global_sum_and_count(values)
    mean = total / count
    squares, _ = global_sum_and_count((values.detach().float() - mean).square())
    return mean, (squares / (count - 1).clamp(min=1)).sqrt()


def global_std(values: torch.Tensor) -> torch.Tensor:
    """``global_mean_and_std``'s standard deviation (GRPO's ``scale_rewards: batch``)."""
    return global_mean_and_std(values)[1]


def global_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """fp32 ``q``-quantile (linear interpolation between order statistics, as ``torch.quantile``) of the 1-D
    ``values`` (detached) of every rank when torch.distributed is initialised (none from a rank inside
    ``stand_in``); NaN when there are no values at all. Sort-based, so without ``torch.quantile``'s size limit."""
    values = values.detach().float().flatten()
    if _STAND_IN:
        values = values[:0]
    if dist.is_available() and dist.is_initialized():
        size = torch.tensor([values.numel()], device=values.device)
        sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
        dist.all_gather(sizes, size)
        padded = values.new_full((int(max(sizes)),), float("nan"))
        padded[:values.numel()] = values
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        values = torch.cat([part[:int(n)] for part, n in zip(parts, sizes)])
    if values.numel() == 0:
        return values.new_tensor(float("nan"))
    ordered = values.sort().values
    position = q * (ordered.numel() - 1)
    low = int(position)
    high = min(low + 1, ordered.numel() - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


class RunningMean:
    """Mean of every value passed to ``update`` so far, across ranks: BCO's reward shift ``delta`` (DPO's
    ``bco_pair`` and KTO's unpaired ``bco``)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0.0

    @property
    def mean(self) -> float:
        """The running mean (0 before the first update)."""
        return self.total / self.count if self.count else 0.0

    def update(self, values: torch.Tensor) -> float:
        """Fold ``values`` (any shape, detached) into the mean and return the new mean."""
        total, count = global_sum_and_count(values)
        self.total += total.item()
        self.count += count.item()
        return self.mean

    def state_dict(self) -> dict[str, float]:
        """The state to checkpoint."""
        return {"total": self.total, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore a state from ``state_dict``."""
        self.total, self.count = float(state["total"]), float(state["count"])
