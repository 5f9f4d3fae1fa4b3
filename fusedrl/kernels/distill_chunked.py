"""Chunked pure-torch backend of the full-vocabulary distillation divergence.

Per token, with student logprobs ``logp`` and teacher logprobs ``logq`` over the whole
vocabulary (both at the same temperature):

- ``forward_kl``: ``KL(q || p) = sum q (logq - logp)``; its logit gradient is ``p - q``;
- ``reverse_kl``: ``KL(p || q) = sum p (logp - logq)``; gradient ``p (logp - logq - KL(p || q))``;
- ``jsd``: generalized JSD ``beta KL(q || m) + (1 - beta) KL(p || m)`` with ``m = (1 - beta) p + beta q``
  (TRL's GKD convention); gradient ``(1 - beta) p (logp - logm - KL(p || m))``.

The gradient needs one per-token scalar besides the two logsumexps (``aux``: ``KL(p || q)``
or ``KL(p || m)``; 0 for forward_kl), which the forward returns. Tokens are processed in
chunks so no tensor exceeds ``chunk tokens x V``; the weight gradient accumulates in fp32.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .chunked import accumulate_logit_grad, chunk_logits, chunk_tokens_for
from .stats import LinearVocabProblem, gradient_buffers

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


class DistillProblem(NamedTuple):
    """A student and a teacher over the same vocabulary, one row per (kept) token of each."""

    student: LinearVocabProblem
    teacher: LinearVocabProblem
    divergence: str
    beta: float


class DistillForward(NamedTuple):
    """Per-token divergence, the gradient's scalar ``aux`` and both logsumexps, fp32 ``[N]`` each."""

    divergence: torch.Tensor
    aux: torch.Tensor
    student_lse: torch.Tensor
    teacher_lse: torch.Tensor


def _mixture_logprobs(logp: torch.Tensor, logq: torch.Tensor, beta: float) -> torch.Tensor:
    """``log((1 - beta) p + beta q)`` from the two logprobs, stably."""
    return torch.logaddexp(logp + math.log1p(-beta), logq + math.log(beta))


def divergence_sums(logp: torch.Tensor, logq: torch.Tensor, divergence: str, beta: float):
    """``(divergence [C], aux [C])`` of rows of student / teacher logprobs ``[C, V]``."""
    p = logp.exp()
    if divergence == "forward_kl":
        return (logq.exp() * (logq - logp)).sum(-1), torch.zeros_like(logp[:, 0])
    if divergence == "reverse_kl":
        kl = (p * (logp - logq)).sum(-1)
        return kl, kl
    logm = _mixture_logprobs(logp, logq, beta)
    kl_pm = (p * (logp - logm)).sum(-1)
    return beta * (logq.exp() * (logq - logm)).sum(-1) + (1.0 - beta) * kl_pm, kl_pm


def divergence_logit_grad(logp: torch.Tensor, logq: torch.Tensor, aux: torch.Tensor, divergence: str,
                          beta: float) -> torch.Tensor:
    """``d divergence / d student logits`` ``[C, V]`` (before temperature and softcap)."""
    p = logp.exp()
    if divergence == "forward_kl":
        return p - logq.exp()
    if divergence == "reverse_kl":
        return p * (logp - logq - aux[:, None])
    return (1.0 - beta) * p * (logp - _mixture_logprobs(logp, logq, beta) - aux[:, None])


def distill_forward(problem: DistillProblem, chunk_size: int | None = None) -> DistillForward:
    """Divergence, aux and logsumexps of every token, one token chunk at a time."""
    student, teacher = problem.student, problem.teacher
    n, vocab = student.hidden.shape[0], student.weight.shape[0]
    out = DistillForward(*(torch.empty(n, dtype=torch.float32, device=student.hidden.device) for _ in range(4)))
    student_w32, teacher_w32 = student.weight.float(), teacher.weight.float()
    step = chunk_tokens_for(vocab, chunk_size)
    for start in range(0, n, step):
        stop = min(n, start + step)
        logp = chunk_logits(student, student_w32, start, stop).z
        logq = chunk_logits(teacher, teacher_w32, start, stop).z
        out.student_lse[start:stop] = torch.logsumexp(logp, dim=-1)
        out.teacher_lse[start:stop] = torch.logsumexp(logq, dim=-1)
        logp -= out.student_lse[start:stop, None]
        logq -= out.teacher_lse[start:stop, None]
        out.divergence[start:stop], out.aux[start:stop] = divergence_sums(logp, logq, problem.divergence,
                                                                          problem.beta)
    return out


def distill_backward(problem: DistillProblem, forward: DistillForward, grad: torch.Tensor,
                     need_hidden: bool, need_weight: bool, need_bias: bool, chunk_size: int | None = None):
    """Student gradients (hidden in its dtype, weight fp32, bias fp32; None where not needed) of
    ``sum(grad * divergence)`` from recomputed logits."""
    student, teacher = problem.student, problem.teacher
    hidden, weight = student.hidden, student.weight
    n, vocab = hidden.shape[0], weight.shape[0]
    student_w32, teacher_w32 = weight.float(), teacher.weight.float()
    grads = gradient_buffers(student, need_hidden, need_weight, need_bias)
    step = chunk_tokens_for(vocab, chunk_size)
    for start in range(0, n, step):
        stop = min(n, start + step)
        logp, softcap_grad, hidden32 = chunk_logits(student, student_w32, start, stop)
        logq = chunk_logits(teacher, teacher_w32, start, stop).z
        logp -= forward.student_lse[start:stop, None]
        logq -= forward.teacher_lse[start:stop, None]
        dz = divergence_logit_grad(logp, logq, forward.aux[start:stop], problem.divergence, problem.beta)
        dz *= grad[start:stop, None] / student.temperature
        if softcap_grad is not None:
            dz *= softcap_grad
        accumulate_logit_grad(dz, hidden32, student, student_w32, start, stop, grads)
    return grads
