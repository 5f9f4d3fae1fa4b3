"""Knowledge distillation from the teacher's top-k logprobs, on the student's logprobs of the same K ids."""
from __future__ import annotations

import math

import torch

from ..distill_chunked import DIVERGENCES
from .checks import check_choice, check_range, check_same_shape, check_tensor
from .sequence import masked_mean

__all__ = ["DIVERGENCES", "teacher_logprobs", "topk_kd_loss"]


def teacher_logprobs(
    target_logprobs: torch.Tensor, *, kd_temperature: float = 1.0, teacher_temperature: float = 1.0
) -> torch.Tensor:
    """Teacher ``log p [..., K]`` renormalised over the K ids, moved from ``teacher_temperature`` to ``kd_temperature``.

    ``p = exp(lp)`` renormalised, then ``p <- p^(T_gen / T)`` renormalised: one log-softmax of ``lp * T_gen / T``.
    """
    return torch.log_softmax(target_logprobs.float() * (teacher_temperature / kd_temperature), dim=-1)


def _kl_terms(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """``sum_k a_k (log a_k - log b_k)`` over the last dim, with ``0 * log 0 = 0``."""
    a = log_a.exp()
    return torch.where(a > 0, a * (log_a - log_b), 0.0).sum(-1)


def _divergence(log_p: torch.Tensor, log_q: torch.Tensor, divergence: str, kd_beta: float) -> torch.Tensor:
    """Per-position divergence between teacher ``p`` and student ``q`` over the K ids."""
    if divergence == "forward_kl":
        return _kl_terms(log_p, log_q)
    if divergence == "reverse_kl":
        return _kl_terms(log_q, log_p)
    log_m = torch.logaddexp(log_p + math.log(kd_beta), log_q + math.log1p(-kd_beta))
    return kd_beta * _kl_terms(log_p, log_m) + (1.0 - kd_beta) * _kl_terms(log_q, log_m)


def topk_kd_loss(
    student_logps: torch.Tensor,
    target_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    kd_temperature: float = 1.0,
    teacher_temperature: float = 1.0,
    divergence: str = "forward_kl",
    kd_beta: float = 0.5,
    kd_normalize_topk: bool = False,
    kd_alpha: float = 1.0,
    kd_ce_alpha: float = 0.0,
    ce_loss: torch.Tensor | None = None,
):
    """``kd_alpha * T^2 * KD + kd_ce_alpha * CE`` with KD averaged over the valid positions.

    Args:
        student_logps: ``[..., K]`` student ``log q`` of the teacher's ids at temperature
            ``T = kd_temperature``, normalised over the full vocabulary (the kernel with K ids).
        target_logprobs: ``[..., K]`` teacher logprobs as stored (made at ``teacher_temperature``).
        mask: ``[...]`` bool, True at positions that carry teacher targets.
        divergence: ``forward_kl`` ``sum p (log p - log q)`` (default), ``reverse_kl``
            ``sum q (log q - log p)``, or ``jsd``: ``b KL(p || m) + (1 - b) KL(q || m)``,
            ``m = b p + (1 - b) q``, ``b = kd_beta`` in (0, 1); all over the K ids.
        kd_normalize_topk: renormalise the student over the K ids instead of the full vocabulary.
        ce_loss: the scalar token-mean cross-entropy of the labels (at temperature 1), required
            when ``kd_ce_alpha > 0``.

    Returns:
        ``(loss scalar fp32, metrics)`` with kd_loss (the mean divergence) and, given, ce_loss.
    """
    check_tensor("student_logps", student_logps)
    check_same_shape("student_logps", student_logps, target_logprobs=target_logprobs)
    check_tensor("mask", mask)
    if mask.dtype != torch.bool or mask.shape != student_logps.shape[:-1]:
        raise ValueError(f"mask: expected a bool tensor of shape {list(student_logps.shape[:-1])}, "
                         f"got {mask.dtype} {list(mask.shape)}")
    check_choice("divergence", divergence, DIVERGENCES)
    check_range("kd_temperature", kd_temperature, 0.0, low_open=True)
    check_range("teacher_temperature", teacher_temperature, 0.0, low_open=True)
    if divergence == "jsd":
        check_range("kd_beta", kd_beta, 0.0, 1.0, low_open=True, high_open=True)
    check_range("kd_alpha", kd_alpha, 0.0)
    check_range("kd_ce_alpha", kd_ce_alpha, 0.0)
    if kd_ce_alpha > 0 and ce_loss is None:
        raise ValueError("ce_loss: required when kd_ce_alpha > 0")
    valid = mask[..., None]
    log_p = teacher_logprobs(torch.where(valid, target_logprobs.float(), 0.0),
                             kd_temperature=kd_temperature, teacher_temperature=teacher_temperature)
    log_q = torch.where(valid, student_logps.float(), 0.0)
    if kd_normalize_topk:
        log_q = torch.log_softmax(log_q, dim=-1)
    kd = masked_mean(_divergence(log_p, log_q, divergence, kd_beta), mask)
    loss = kd_alpha * kd_temperature**2 * kd
    metrics = {"kd_loss": kd.detach()}
    if ce_loss is not None:
        loss = loss + kd_ce_alpha * ce_loss.float()
        metrics["ce_loss"] = ce_loss.detach().float()
    return loss, metrics
