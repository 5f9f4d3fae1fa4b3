"""Eager reference backend: materialises the full ``[N, V]`` logits.

The ground truth every other backend is tested against. Never used in training.
"""
from __future__ import annotations

import torch

from .stats import VocabStats, apply_softcap


def eager_vocab_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    ids: torch.Tensor,
    temperature: float,
    softcap: float | None,
) -> VocabStats:
    """Statistics from full fp32 logits; hidden ``[N, H]``, weight ``[V, H]``, ids ``[N, K]`` (-1 = ignored).
    Every statistic of a token whose ids are all ignored is 0, as the fused backends give (they skip it)."""
    logits = hidden.float() @ weight.float().T
    if bias is not None:
        logits = logits + bias.float()
    z = apply_softcap(logits, softcap) / temperature
    logsm = torch.log_softmax(z, dim=-1)
    valid = ids >= 0
    logp = torch.where(valid, logsm.gather(1, ids.clamp(min=0)), torch.zeros((), device=z.device))
    lse = torch.logsumexp(z, dim=-1)
    entropy = -(logsm.exp() * logsm).sum(-1)
    max_logp = logsm.max(-1).values.detach()
    log_sum_p_sq = torch.logsumexp(2.0 * logsm, dim=-1).detach()
    kept = valid.any(dim=1)
    per_token = (torch.where(kept, stat, 0.0) for stat in (lse, entropy, z.sum(-1), max_logp, log_sum_p_sq))
    return VocabStats(logp, *per_token)
