"""One-call distillation from hidden states and the lm_head weight: from a teacher's top-k, or from a live
teacher over the full vocabulary."""
from __future__ import annotations

import torch

from ..cross_entropy import linear_cross_entropy
from ..distill import linear_distill_divergence
from ..logprobs import linear_logprobs
from .checks import check_range, check_same_shape, check_tensor
from .distill import topk_kd_loss
from .fused_common import check_hidden_labels
from .sequence import completion_mask, token_mean_nll


def fused_linear_topk_kd_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    target_ids: torch.Tensor,
    target_logprobs: torch.Tensor,
    *,
    target_mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    kd_temperature: float = 1.0,
    teacher_temperature: float = 1.0,
    divergence: str = "forward_kl",
    kd_beta: float = 0.5,
    kd_normalize_topk: bool = False,
    kd_alpha: float = 1.0,
    kd_ce_alpha: float = 0.0,
    softcap: float | None = None,
    ignore_index: int = -100,
    backend: str = "auto",
):
    """``kd_alpha * T^2 * KD + kd_ce_alpha * CE`` from the student's hidden states (see ``topk_kd_loss``).

    Args:
        hidden ``[B, T, H]``, weight ``[V, H]``, bias ``[V]``.
        labels: ``[B, T]`` next tokens (already shifted) for the CE term at temperature 1.
        target_ids, target_logprobs: ``[B, T, K]`` teacher top-k, aligned with labels (position t holds
            the teacher's distribution over token t+1).
        target_mask: ``[B, T]`` bool positions with teacher targets (default ``labels != ignore_index``).
        softcap: optional logit softcapping ``s * tanh(z / s)``, applied before the temperature.

    The student's logprobs of the K ids over the full vocabulary at ``kd_temperature`` come from one
    kernel pass; at temperature 1 the label rides along as a (K+1)-th id in the same pass.

    Returns:
        ``(loss scalar fp32, metrics)``: kd_loss and, when kd_ce_alpha > 0, ce_loss.
    """
    check_hidden_labels(hidden, labels)
    check_tensor("target_ids", target_ids, dims=3)
    if target_ids.shape[:2] != labels.shape:
        raise ValueError(f"target_ids: expected shape {list(labels.shape)} + [K] like labels, "
                         f"got {list(target_ids.shape)}")
    check_same_shape("target_ids", target_ids, target_logprobs=target_logprobs)
    check_range("kd_temperature", kd_temperature, 0.0, low_open=True)
    check_range("kd_ce_alpha", kd_ce_alpha, 0.0)
    label_mask = completion_mask(labels, ignore_index)
    if target_mask is not None and (not isinstance(target_mask, torch.Tensor) or target_mask.dtype != torch.bool
                                    or target_mask.shape != labels.shape):
        raise ValueError(f"target_mask: expected a bool tensor of shape {list(labels.shape)} like labels")
    mask = label_mask if target_mask is None else target_mask
    ids = torch.where(mask[..., None], target_ids, ignore_index)
    ce_loss = None
    if kd_ce_alpha > 0 and kd_temperature == 1.0:
        logps = linear_logprobs(hidden, weight, torch.cat([ids, labels[..., None]], dim=-1), bias=bias,
                                softcap=softcap, ignore_index=ignore_index, backend=backend)
        student_logps = logps[..., :-1]
        ce_loss = token_mean_nll(logps[..., -1], label_mask)
    else:
        student_logps = linear_logprobs(hidden, weight, ids, bias=bias, temperature=kd_temperature,
                                        softcap=softcap, ignore_index=ignore_index, backend=backend)
        if kd_ce_alpha > 0:
            label_logps = linear_logprobs(hidden, weight, labels, bias=bias, softcap=softcap,
                                          ignore_index=ignore_index, backend=backend)
            ce_loss = token_mean_nll(label_logps, label_mask)
    return topk_kd_loss(
        student_logps, target_logprobs, mask, kd_temperature=kd_temperature, teacher_temperature=teacher_temperature,
        divergence=divergence, kd_beta=kd_beta, kd_normalize_topk=kd_normalize_topk, kd_alpha=kd_alpha,
        kd_ce_alpha=kd_ce_alpha, ce_loss=ce_loss,
    )


def fused_linear_kd_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    kd_temperature: float = 1.0,
    divergence: str = "forward_kl",
    kd_beta: float = 0.5,
    kd_alpha: float = 1.0,
    kd_ce_alpha: float = 0.0,
    softcap: float | None = None,
    teacher_softcap: float | None = None,
    ignore_index: int = -100,
    backend: str = "auto",
):
    """``kd_alpha * T^2 * KD + kd_ce_alpha * CE`` against a live teacher over the full vocabulary.

    Args:
        hidden ``[B, T, H]``, weight ``[V, H]``, bias ``[V]``: the student; teacher_hidden ``[B, T, Ht]``,
            teacher_weight ``[V, Ht]``, teacher_bias ``[V]``: the teacher (no gradient), on the same tokens.
        labels: ``[B, T]`` next tokens (already shifted): KD averages over their non-ignored positions, CE
            (at temperature 1) reads them.
        divergence, kd_beta: as ``topk_kd_loss`` (teacher p, student q; ``jsd`` mixes ``b p + (1 - b) q``),
            here over every vocabulary id at ``T = kd_temperature`` for both models.

    Returns:
        ``(loss scalar fp32, metrics)``: kd_loss and, when kd_ce_alpha > 0, ce_loss.
    """
    check_hidden_labels(hidden, labels)
    check_range("kd_temperature", kd_temperature, 0.0, low_open=True)
    check_range("kd_alpha", kd_alpha, 0.0)
    check_range("kd_ce_alpha", kd_ce_alpha, 0.0)
    kd = linear_distill_divergence(hidden, weight, teacher_hidden, teacher_weight, labels, divergence=divergence,
                                   beta=kd_beta, temperature=kd_temperature, student_bias=bias,
                                   teacher_bias=teacher_bias, student_softcap=softcap, teacher_softcap=teacher_softcap,
                                   ignore_index=ignore_index, backend=backend)
    loss = kd_alpha * kd_temperature**2 * kd
    metrics = {"kd_loss": kd.detach()}
    if kd_ce_alpha > 0:
        ce_loss = linear_cross_entropy(hidden, weight, labels, bias=bias, softcap=softcap, ignore_index=ignore_index,
                                       backend=backend)
        loss = loss + kd_ce_alpha * ce_loss
        metrics["ce_loss"] = ce_loss.detach()
    return loss, metrics
