"""``linear_cross_entropy``: SFT loss from hidden states without materialising logits."""
from __future__ import annotations

import torch

from .dispatch import prepare_problem, vocab_stats

REDUCTIONS = ("mean", "sum", "none")


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: str = "mean",
    return_mean_logit: bool = False,
    return_accuracy: bool = False,
    return_log_sum_p_sq: bool = False,
    backend: str = "auto",
    chunk_size: int | None = None,
):
    """Cross-entropy of ``labels`` under ``softmax(softcap(hidden @ weight.T + bias))``.

    Per token: ``(1 - eps) * nll + eps * mean_v(-logp_v) + z_loss * lse**2`` (torch's label
    smoothing semantics; z-loss as in PaLM), 0 where ``labels == ignore_index``.

    Args:
        hidden ``[..., H]``, weight ``[V, H]``, labels ``[...]`` (already shifted), bias ``[V]``.
        reduction: ``mean`` over non-ignored tokens (0 when all are ignored), ``sum``, or ``none``
            (per-token ``[...]`` losses; any upstream gradient is accepted).
        return_mean_logit: also return the per-token mean logit ``sum_v z_v / V`` ``[...]``.
        return_accuracy: also return ``[...]`` floats, 1 where the label is the argmax of the logits
            (ties count as correct) and 0 elsewhere or where ignored.
        return_log_sum_p_sq: also return the per-token ``log sum_v p_v**2`` ``[...]`` (no gradient; WPO's weight).

    Returns:
        fp32 loss (scalar, or ``[...]`` for ``none``); with ``return_*`` a tuple
        ``(loss, [mean_logit], [accuracy], [log_sum_p_sq])``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing: expected a value in [0, 1], got {label_smoothing!r}")
    if not z_loss >= 0.0:
        raise ValueError(f"z_loss: expected a value >= 0, got {z_loss!r}")
    if isinstance(labels, torch.Tensor) and tuple(labels.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"labels: expected shape {list(hidden.shape[:-1])}, got {list(labels.shape)}")
    problem, lead = prepare_problem(
        hidden, weight, labels, bias=bias, temperature=1.0, softcap=softcap, ignore_index=ignore_index,
        ids_name="labels",
    )
    stats = vocab_stats(problem, backend, chunk_size)
    vocab = weight.shape[0]
    valid = problem.ids[:, 0] >= 0
    per_token = -stats.logp[:, 0]
    if label_smoothing > 0.0:
        smooth = stats.lse - stats.logit_sum / vocab
        per_token = (1.0 - label_smoothing) * per_token + label_smoothing * smooth
    if z_loss > 0.0:
        per_token = per_token + z_loss * stats.lse.square()
    per_token = torch.where(valid, per_token, 0.0)
    if reduction == "none":
        loss = per_token.reshape(lead)
    elif reduction == "sum":
        loss = per_token.sum()
    else:
        loss = per_token.sum() / valid.sum().clamp(min=1)
    extras = [(return_mean_logit, stats.logit_sum / vocab),
              (return_accuracy, (valid & (stats.logp[:, 0] >= stats.max_logp)).float()),
              (return_log_sum_p_sq, stats.log_sum_p_sq)]
    if not any(wanted for wanted, _ in extras):
        return loss
    return (loss, *(stat.reshape(lead) for wanted, stat in extras if wanted))
