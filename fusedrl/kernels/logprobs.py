"""``linear_logprobs``: logprobs of chosen ids straight from hidden states and the lm_head weight."""
from __future__ import annotations

import torch

from .dispatch import prepare_problem, vocab_stats


def linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    ids: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
    return_lse: bool = False,
    return_log_sum_p_sq: bool = False,
    softcap: float | None = None,
    backend: str = "auto",
    chunk_size: int | None = None,
):
    """Log-probabilities of ``ids`` under ``softmax(softcap(hidden @ weight.T + bias) / temperature)``.

    Args:
        hidden: ``[..., H]`` final hidden states (fp32, bf16 or fp16).
        weight: ``[V, H]`` lm_head weight; bias: optional ``[V]``.
        ids: ``[...]`` (one id per token) or ``[..., K]`` (K ids per token); ``ignore_index`` entries give 0.
        return_entropy / return_lse: also return the per-token entropy / logsumexp, each ``[...]``.
        return_log_sum_p_sq: also return the per-token ``log sum_v p_v**2`` ``[...]`` (no gradient; WPO).
        softcap: optional ``s`` for ``s * tanh(logits / s)`` before the temperature.
        backend: ``auto`` | ``triton`` | ``torch`` | ``eager``.
        chunk_size: tokens per chunk of the ``torch`` backend and of the ``triton`` backward (default: from a
            memory budget).

    Returns:
        fp32 logprobs shaped like ``ids``; with ``return_*`` a tuple ``(logp, [entropy], [lse], [log_sum_p_sq])``.
        Differentiable w.r.t. hidden, weight and bias, through logp, entropy and lse.
    """
    problem, lead = prepare_problem(
        hidden, weight, ids, bias=bias, temperature=temperature, softcap=softcap, ignore_index=ignore_index
    )
    stats = vocab_stats(problem, backend, chunk_size)
    logp = stats.logp.reshape(ids.shape)
    extras = [(return_entropy, stats.entropy), (return_lse, stats.lse), (return_log_sum_p_sq, stats.log_sum_p_sq)]
    if not any(wanted for wanted, _ in extras):
        return logp
    return (logp, *(stat.reshape(lead) for wanted, stat in extras if wanted))
