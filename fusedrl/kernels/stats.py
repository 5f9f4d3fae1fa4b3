"""The per-token statistics every vocab-sized op is built from.

For one token with logits ``z = softcap(h @ W.T + b) / T`` over the whole vocabulary:

- ``logp[k] = z[ids[k]] - lse`` (exactly 0 where ``ids[k]`` is ignored),
- ``lse = logsumexp(z)``,
- ``entropy = lse - sum(softmax(z) * z)``,
- ``logit_sum = sum(z)`` (label smoothing and the mean-logit metric),
- ``max_logp = max(z) - lse`` (no gradient: the logprob of the argmax, for token accuracy),
- ``log_sum_p_sq = log sum(softmax(z)**2)`` (no gradient: WPO's per-token weight adjustment).

All are fp32; all but ``max_logp`` and ``log_sum_p_sq`` are differentiable. Backends return them as a ``VocabStats``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

STORE_ROWS = 256  # rows per scatter of a chunk's hidden gradient into the rows of kept tokens


class VocabStats(NamedTuple):
    """Per-token statistics over the vocabulary: logp ``[N, K]``; lse, entropy, logit_sum, max_logp,
    log_sum_p_sq ``[N]``."""

    logp: torch.Tensor
    lse: torch.Tensor
    entropy: torch.Tensor
    logit_sum: torch.Tensor
    max_logp: torch.Tensor
    log_sum_p_sq: torch.Tensor


def apply_softcap(logits: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """``softcap * tanh(logits / softcap)``, or ``logits`` unchanged when softcap is None."""
    if softcap is None:
        return logits
    return softcap * torch.tanh(logits / softcap)


class LinearVocabProblem(NamedTuple):
    """Inputs of one vocab-stats call, flattened: hidden ``[N, H]``, weight ``[V, H]``, ids ``[M, K]`` of the M
    tokens to compute.

    Ignored ids are already replaced by -1; hidden and weight are contiguous. ``token_rows`` ``[M]`` (int64,
    ascending) are the rows of hidden those tokens read when the caller skipped some (``dispatch`` skips tokens
    whose ids are all ignored); None: every row, in order (M = N).
    """

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    ids: torch.Tensor
    temperature: float
    softcap: float | None
    token_rows: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        """M, the tokens computed (the rows of ``ids``)."""
        return self.ids.shape[0]

    def token_hidden(self, start: int, stop: int) -> torch.Tensor:
        """Hidden states ``[stop - start, H]`` of tokens ``[start, stop)`` (a gathered copy under ``token_rows``)."""
        if self.token_rows is None:
            return self.hidden[start:stop]
        return self.hidden.index_select(0, self.token_rows[start:stop])

    def store_token_rows(self, out: torch.Tensor, start: int, stop: int, values: torch.Tensor) -> None:
        """Write ``values [stop - start, ...]`` of tokens ``[start, stop)`` into their rows of ``out [N, ...]``,
        cast to ``out``'s dtype (scattered ``STORE_ROWS`` rows at a time, so the cast copy stays small)."""
        if self.token_rows is None:
            out[start:stop] = values
            return
        for first in range(0, stop - start, STORE_ROWS):
            last = min(stop - start, first + STORE_ROWS)
            out.index_copy_(0, self.token_rows[start + first:start + last], values[first:last].to(out.dtype))


class StatsGrad(NamedTuple):
    """Upstream gradient folded into per-token coefficients.

    For each token the logit gradient is
    ``dz[v] = sum_k target[k] * [v == ids[k]] + p[v] * (coef_a - coef_c * logp[v]) + logit_sum``
    where ``p = softmax(z)`` and ``logp = log p``. ``coef_c`` and ``logit_sum`` may be None (zero).
    """

    target: torch.Tensor
    coef_a: torch.Tensor
    coef_c: torch.Tensor | None
    logit_sum: torch.Tensor | None


class ForwardStats(NamedTuple):
    """Raw forward outputs of a backend: target logits ``[N, K]`` (0 where ignored); lse, entropy, logit_sum,
    max_logit, log_sum_p_sq ``[N]``."""

    target_logits: torch.Tensor
    lse: torch.Tensor
    entropy: torch.Tensor
    logit_sum: torch.Tensor
    max_logit: torch.Tensor
    log_sum_p_sq: torch.Tensor


def gradient_buffers(problem: LinearVocabProblem, need_hidden: bool, need_weight: bool,
                     need_bias: bool) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """A backward's outputs: the hidden gradient ``[N, H]`` in hidden's dtype (to be filled; zeros in the rows of
    skipped tokens), fp32 zeros for the weight ``[V, H]`` and bias ``[V]`` gradients; None where not needed."""
    hidden, weight = problem.hidden, problem.weight
    dev = hidden.device
    d_hidden = None
    if need_hidden:
        fill = torch.empty if problem.token_rows is None else torch.zeros
        d_hidden = fill(hidden.shape, dtype=hidden.dtype, device=dev)
    d_weight = torch.zeros(weight.shape, dtype=torch.float32, device=dev) if need_weight else None
    d_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=dev) if need_bias else None
    return d_hidden, d_weight, d_bias
