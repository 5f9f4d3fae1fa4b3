"""Eager reference of ``linear_topk``: materialises the full ``[N, V]`` logits. Tests only."""
from __future__ import annotations

import torch

from .stats import apply_softcap


def eager_topk(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, k: int, temperature: float,
    softcap: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of ``log_softmax(softcap(logits) / temperature)`` in fp32; hidden ``[N, H]``, weight ``[V, H]``
    -> ``([N, k], [N, k])``.

    A stable descending sort of the logits ranks equal logits by lower token id.
    """
    logits = hidden.float() @ weight.float().T
    if bias is not None:
        logits = logits + bias.float()
    z = apply_softcap(logits, softcap) / temperature
    ids = torch.sort(z, dim=-1, descending=True, stable=True).indices[:, :k]
    return torch.log_softmax(z, dim=-1).gather(1, ids), ids
