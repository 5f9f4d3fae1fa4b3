"""Host side of the Triton distillation divergence: the backend interface ``distill_forward`` /
``distill_backward`` (see ``fusedrl.kernels.distill_chunked`` for the torch twin).

Forward: the student's and the teacher's logsumexps come from the vocab-stats forward kernel, then
``distill_fwd_kernel`` sums the divergence over vocab splits. Backward: the ``split`` strategy of the
vocab-stats backward, with ``distill_grad_store_kernel`` writing each ``dz`` chunk.
"""
from __future__ import annotations

import math

import torch
import triton

from ..distill_chunked import DIVERGENCES, DistillForward, DistillProblem
from .backward_launch import split_vocab_chunks, token_chunked_gradients
from .distill_kernels import distill_fwd_kernel, distill_grad_store_kernel
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


def _options(problem: DistillProblem) -> dict:
    s, t = problem.student, problem.teacher
    cfg = tile_config(s.hidden.dtype)
    return dict(
        DIVERGENCE=DIVERGENCES.index(problem.divergence),
        S_HAS_BIAS=s.bias is not None, S_HAS_SOFTCAP=s.softcap is not None,
        T_HAS_BIAS=t.bias is not None, T_HAS_SOFTCAP=t.softcap is not None,
        BLOCK_N=cfg.block_n, BLOCK_V=cfg.block_v, BLOCK_H=cfg.block_h,
        DOT_PRECISION=dot_precision(s.hidden.dtype), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )


def distill_forward(problem: DistillProblem, chunk_size: int | None = None) -> DistillForward:
    """Divergence, aux and both logsumexps ``[N]`` (fp32); ``chunk_size`` is unused here."""
    student, teacher = problem.student, problem.teacher
    (n, hs), vocab, ht = student.hidden.shape, student.weight.shape[0], teacher.hidden.shape[1]
    student_lse, teacher_lse = forward_stats(student).lse, forward_stats(teacher).lse
    dev = student.hidden.device
    if n == 0:
        empty = torch.zeros(0, dtype=torch.float32, device=dev)
        return DistillForward(empty, empty, student_lse, teacher_lse)
    cfg = tile_config(student.hidden.dtype)
    n_blocks, v_blocks = triton.cdiv(n, cfg.block_n), triton.cdiv(vocab, cfg.block_v)
    v_per_split = triton.cdiv(v_blocks, vocab_splits(n_blocks, v_blocks, dev)) * cfg.block_v
    splits = triton.cdiv(vocab, v_per_split)
    part_div, part_aux = (torch.empty((splits, n), dtype=torch.float32, device=dev) for _ in range(2))
    distill_fwd_kernel[(n_blocks, splits)](
        *_operands(problem, 0, n), student_lse, teacher_lse, part_div, part_aux,
        n, vocab, hs, ht, v_per_split, *_scalars(problem), **_options(problem),
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
                **_options(problem),
            )

        split_vocab_chunks(student.hidden, student.weight, start, stop, plan, d_hidden32, d_weight, dz_buffer,
                           write_dz)

    return token_chunked_gradients(student.hidden, student.weight, need_hidden, need_weight, need_bias, chunk_size,
                                   True, accumulate)
