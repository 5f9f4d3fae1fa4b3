"""Host side of the Triton distillation divergence: the backend interface ``distill_forward`` /
``distill_backward`` (see ``fusedrl.kernels.distill_chunked`` for the torch twin).

Forward: forward and reverse KL in one pass over the two heads (``distill_kl_fwd_kernel``, online); the JSD
takes both logsumexps from the vocab-stats forward kernel first, then ``distill_jsd_fwd_kernel`` sums it.
Backward: the ``split`` strategy of the vocab-stats backward, with ``distill_grad_store_kernel`` writing each
``dz`` chunk.
"""
from __future__ import annotations

import math

import torch
import triton

from ..distill_chunked import DIVERGENCES, DistillForward, DistillProblem
from .backward_launch import split_vocab_chunks, token_chunked_gradients
from .distill_kernels import distill_grad_store_kernel, distill_jsd_fwd_kernel, distill_kl_fwd_kernel
from .launch import forward_stats, vocab_splits
from .launch_config import dot_precision, scalar_args, tile_config


def _operands(problem: DistillProblem, start: int, stop: int) -> list:
    """The two models' pointer arguments for tokens ``[start, stop)``."""
    s, t = problem.student, problem.teacher
    return [s.hidden[start:stop], s.weight, s.bias if s.bias is not None else s.hidden,
            t.hidden[start:stop], t.weight, t.bias if t.bias is not None else t.hidden]


def _scalars(problem: DistillProblem) -> list:
    """``1 / T``, both softcaps, ``beta``, ``log(1 - beta)``, ``log(beta)`` (the logs 0 unless jsd)."""
    inv_t, s_softcap = scalar_args(problem.student)
    _, t_softcap = scalar_args(problem.teacher)
    beta = problem.beta
    logs = (math.log1p(-beta), math.log(beta)) if problem.divergence == "jsd" else (0.0, 0.0)
    return [inv_t, s_softcap, t_softcap, beta, *logs]


def _flags(problem: DistillProblem) -> dict:
    """Constexpr flags and launch options every distillation kernel takes."""
    s, t = problem.student, problem.teacher
    cfg = tile_config(s.hidden.dtype)
    return dict(
        S_HAS_BIAS=s.bias is not None, S_HAS_SOFTCAP=s.softcap is not None,
        T_HAS_BIAS=t.bias is not None, T_HAS_SOFTCAP=t.softcap is not None,
        BLOCK_N=cfg.block_n, BLOCK_V=cfg.block_v, BLOCK_H=cfg.block_h,
        DOT_PRECISION=dot_precision(s.hidden.dtype), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )


def _split_grid(problem: DistillProblem) -> tuple[tuple[int, int], int]:
    """The forward grid ``(token blocks, vocab splits)`` and the vocab ids per split."""
    n, vocab = problem.student.hidden.shape[0], problem.student.weight.shape[0]
    cfg = tile_config(problem.student.hidden.dtype)
    n_blocks, v_blocks = triton.cdiv(n, cfg.block_n), triton.cdiv(vocab, cfg.block_v)
    v_per_split = triton.cdiv(v_blocks, vocab_splits(n_blocks, v_blocks, problem.student.hidden.device)) * cfg.block_v
    return (n_blocks, triton.cdiv(vocab, v_per_split)), v_per_split


def _merged_splits(part_max: torch.Tensor, part_sum: torch.Tensor, part_cross: torch.Tensor):
    """``(lse [N], cross / sum-exp [N])`` of per-split online max, sum-exp and a cross sum kept relative to the
    same max (``[splits, N]`` each): the logsumexp and the cross sum's softmax-weighted mean."""
    top = part_max.max(0).values
    scale = torch.exp(part_max - top)
    total = (scale * part_sum).sum(0)
    return top + torch.log(total), (scale * part_cross).sum(0) / total


def _kl_forward(problem: DistillProblem) -> DistillForward:
    """Forward or reverse KL in one pass over the two heads (``distill_kl_fwd_kernel``)."""
    student, teacher = problem.student, problem.teacher
    (n, hs), vocab, ht = student.hidden.shape, student.weight.shape[0], teacher.hidden.shape[1]
    grid, v_per_split = _split_grid(problem)
    s_max, s_sum, t_max, t_sum, cross = (torch.empty((grid[1], n), dtype=torch.float32, device=student.hidden.device)
                                         for _ in range(5))
    reverse = problem.divergence == "reverse_kl"
    distill_kl_fwd_kernel[grid](
        *_operands(problem, 0, n), s_max, s_sum, t_max, t_sum, cross, n, vocab, hs, ht, v_per_split,
        *_scalars(problem)[:3], REVERSE=reverse, **_flags(problem),
    )
    zero = torch.zeros_like(cross)
    student_lse, student_mean = _merged_splits(s_max, s_sum, cross if reverse else zero)
    teacher_lse, teacher_mean = _merged_splits(t_max, t_sum, zero if reverse else cross)
    if reverse:  # KL(p || q) = sum p (s - t) - lse_s + lse_t
        kl = student_mean - student_lse + teacher_lse
        return DistillForward(kl, kl, student_lse, teacher_lse)
    kl = teacher_mean - teacher_lse + student_lse  # KL(q || p) = sum q (t - s) - lse_t + lse_s
    return DistillForward(kl, torch.zeros_like(kl), student_lse, teacher_lse)


def distill_forward(problem: DistillProblem, chunk_size: int | None = None) -> DistillForward:
    """Divergence, aux and both logsumexps ``[N]`` (fp32); ``chunk_size`` is unused here."""
    student, teacher = problem.student, problem.teacher
    (n, hs), vocab, ht = student.hidden.shape, student.weight.shape[0], teacher.hidden.shape[1]
    dev = student.hidden.device
    if n == 0:
        empty = torch.zeros(0, dtype=torch.float32, device=dev)
        return DistillForward(empty, empty, empty, empty)
    if problem.divergence != "jsd":
        return _kl_forward(problem)
    student_lse, teacher_lse = forward_stats(student).lse, forward_stats(teacher).lse
    grid, v_per_split = _split_grid(problem)
    part_div, part_aux = (torch.empty((grid[1], n), dtype=torch.float32, device=dev) for _ in range(2))
    distill_jsd_fwd_kernel[grid](
        *_operands(problem, 0, n), student_lse, teacher_lse, part_div, part_aux,
        n, vocab, hs, ht, v_per_split, *_scalars(problem), **_flags(problem),
    )
    return DistillForward(part_div.sum(0), part_aux.sum(0), student_lse, teacher_lse)


def distill_backward(problem: DistillProblem, forward: DistillForward, grad: torch.Tensor,
                     need_hidden: bool, need_weight: bool, need_bias: bool, chunk_size: int | None = None):
    """Student gradients (hidden in its dtype, weight and bias fp32; None where not needed)."""
    student, teacher = problem.student, problem.teacher
    hs, ht = student.hidden.shape[1], teacher.hidden.shape[1]
    cfg = tile_config(student.hidden.dtype)

    def accumulate(start, stop, plan, d_hidden32, d_weight, d_bias, dz_buffer):
        rows = stop - start
        token_inputs = [*_operands(problem, start, stop), forward.student_lse[start:stop],
                        forward.teacher_lse[start:stop], forward.aux[start:stop], grad[start:stop]]

        def write_dz(col_start: int, col_stop: int, dz: torch.Tensor) -> None:
            grid = (triton.cdiv(rows, cfg.block_n), triton.cdiv(col_stop - col_start, cfg.block_v))
            distill_grad_store_kernel[grid](
                *token_inputs, dz, d_bias if d_bias is not None else dz,
                rows, col_start, col_stop, hs, ht, *_scalars(problem), NEED_DB=d_bias is not None,
                DIVERGENCE=DIVERGENCES.index(problem.divergence), **_flags(problem),
            )

        split_vocab_chunks(student, start, stop, plan, d_hidden32, d_weight, dz_buffer, write_dz)

    return token_chunked_gradients(student, need_hidden, need_weight, need_bias, chunk_size, True, accumulate)
