"""``linear_distill_divergence``: a student's divergence from a live teacher over the full vocabulary,
from both models' hidden states and lm_head weights, without a ``[tokens, vocab]`` tensor."""
from __future__ import annotations

import torch

from . import distill_chunked
from .dispatch import resolve_backend
from .distill_chunked import DIVERGENCES, DistillForward, DistillProblem
from .distill_reference import eager_distill_divergence
from .stats import LinearVocabProblem
from .validation import check_linear_inputs, check_positive

REDUCTIONS = ("mean", "sum", "none")


class _FusedDistill(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, teacher: LinearVocabProblem, temperature, softcap, divergence, beta,
                backend_module, chunk_size):
        student = LinearVocabProblem(hidden, weight, bias, teacher.ids, temperature, softcap)
        out = backend_module.distill_forward(DistillProblem(student, teacher, divergence, beta), chunk_size)
        ctx.save_for_backward(hidden, weight, bias, out.aux, out.student_lse, out.teacher_lse)
        ctx.teacher, ctx.student_args, ctx.divergence_args = teacher, (temperature, softcap), (divergence, beta)
        ctx.backend_module, ctx.chunk_size = backend_module, chunk_size
        return out.divergence

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, bias, aux, student_lse, teacher_lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if not (need_h or need_w or need_b):
            return (None,) * 10
        student = LinearVocabProblem(hidden, weight, bias, ctx.teacher.ids, *ctx.student_args)
        problem = DistillProblem(student, ctx.teacher, *ctx.divergence_args)
        forward = DistillForward(torch.empty(0), aux, student_lse, teacher_lse)
        d_h, d_w, d_b = ctx.backend_module.distill_backward(problem, forward, grad.float().contiguous(), need_h,
                                                            need_w, need_b, ctx.chunk_size)
        d_w = None if d_w is None else d_w.to(weight.dtype)
        d_b = None if d_b is None else d_b.to(bias.dtype)
        return d_h, d_w, d_b, None, None, None, None, None, None, None


def _backend_module(name: str):
    if name == "triton":
        from .triton import distill_launch

        return distill_launch
    return distill_chunked


def _flat(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, keep: torch.Tensor,
          dtype: torch.dtype):
    """``hidden``'s kept rows ``[N_kept, H]`` and contiguous weight in ``dtype``; contiguous bias."""
    rows = hidden.reshape(-1, hidden.shape[-1])[keep].to(dtype).contiguous()
    return rows, weight.to(dtype).contiguous(), None if bias is None else bias.contiguous()


def linear_distill_divergence(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    student_softcap: float | None = None,
    teacher_softcap: float | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    backend: str = "auto",
    chunk_size: int | None = None,
):
    """Divergence of ``softmax(student logits / T)`` from ``softmax(teacher logits / T)`` at every token.

    Logits are ``softcap(hidden @ weight.T + bias)`` of each model (its own softcap and bias); the two lm_heads
    share the vocabulary ``V`` but not the hidden size. The teacher's matmuls run in the student's dtype.

    Args:
        student_hidden ``[..., Hs]``, student_weight ``[V, Hs]``, teacher_hidden ``[..., Ht]`` (same leading
            shape), teacher_weight ``[V, Ht]``; labels ``[...]``: tokens at ``ignore_index`` are left out
            (0 with ``reduction="none"``); other label values are not read.
        divergence: ``forward_kl`` (``KL(teacher || student)``), ``reverse_kl`` (``KL(student || teacher)``) or
            ``jsd`` (``beta KL(q || m) + (1 - beta) KL(p || m)``, ``m = (1 - beta) p + beta q``: TRL's GKD form,
            ``beta`` in (0, 1)).
        reduction: ``mean`` over kept tokens (0 when none), ``sum``, or ``none`` (per token ``[...]``).
        backend: ``auto`` | ``triton`` | ``torch`` | ``eager``; chunk_size: tokens per chunk (torch backend).

    Returns:
        fp32 divergence; differentiable w.r.t. the student's hidden, weight and bias (the teacher gets none).
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence: expected one of {DIVERGENCES}, got {divergence!r}")
    if divergence == "jsd" and not 0.0 < beta < 1.0:
        raise ValueError(f"beta: jsd mixes the two distributions with weight beta, expected a value in (0, 1), "
                         f"got {beta!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
    check_positive("temperature", temperature)
    for name, cap in (("student_softcap", student_softcap), ("teacher_softcap", teacher_softcap)):
        if cap is not None:
            check_positive(name, cap)
    check_linear_inputs(student_hidden, student_weight, student_bias)
    check_linear_inputs(teacher_hidden, teacher_weight, teacher_bias)
    lead = tuple(student_hidden.shape[:-1])
    if tuple(teacher_hidden.shape[:-1]) != lead:
        raise ValueError(f"teacher_hidden: expected leading shape {list(lead)} like student_hidden, got "
                         f"{list(teacher_hidden.shape[:-1])}")
    if teacher_weight.shape[0] != student_weight.shape[0]:
        raise ValueError(f"teacher_weight: expected the student's vocabulary of {student_weight.shape[0]} rows, got "
                         f"{teacher_weight.shape[0]}")
    if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != lead:
        got = list(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels: expected shape {list(lead)}, got {got}")
    keep = (labels != ignore_index).reshape(-1).to(student_hidden.device)
    dtype = torch.promote_types(student_hidden.dtype, student_weight.dtype)
    hidden, weight, bias = _flat(student_hidden, student_weight, student_bias, keep, dtype)
    with torch.no_grad():
        t_hidden, t_weight, t_bias = _flat(teacher_hidden.detach(), teacher_weight.detach(),
                                           None if teacher_bias is None else teacher_bias.detach(), keep, dtype)
    no_ids = torch.full((hidden.shape[0], 1), -1, dtype=torch.int64, device=hidden.device)
    teacher = LinearVocabProblem(t_hidden, t_weight, t_bias, no_ids, float(temperature), teacher_softcap)
    name = resolve_backend(backend, hidden.device)
    if name == "eager":
        student = LinearVocabProblem(hidden, weight, bias, no_ids, float(temperature), student_softcap)
        kept = eager_distill_divergence(student, teacher, divergence, beta)
    else:
        kept = _FusedDistill.apply(hidden, weight, bias, teacher, float(temperature), student_softcap, divergence,
                                   float(beta), _backend_module(name), chunk_size)
    if reduction == "sum":
        return kept.sum()
    if reduction == "mean":
        return kept.sum() / max(1, kept.shape[0])
    return torch.zeros(keep.shape, dtype=torch.float32, device=kept.device).masked_scatter(keep, kept).reshape(lead)
