"""Triton kernels of the full-vocabulary distillation divergence (see ``fusedrl.kernels.distill_chunked``).

Every kernel recomputes a student tile and a teacher tile of logits (``BLOCK_N`` tokens x ``BLOCK_V``
vocab ids, each from its own hidden states and lm_head), one vocab range per program in the forward:

- ``distill_kl_fwd_kernel``: forward and reverse KL in one pass, with online max / sum-exp of both models
  and one cross sum (the host merges the ranges into both logsumexps and the KL);
- ``distill_jsd_fwd_kernel``: the JSD, whose mixture needs both final logsumexps (a first pass computes
  them), and its gradient scalar ``KL(p || m)``;
- ``distill_grad_store_kernel``: the student's logit gradient into a bounded ``[tokens, vocab]`` chunk for
  the ``split`` backward's GEMMs (``DIVERGENCE``: 0 forward_kl, 1 reverse_kl, 2 jsd).
"""
import triton
import triton.language as tl

from .program_tiles import split_program, tile_program, vocab_block
from .vocab_stats_fwd import NEG_INIT, linear_tile, online_softmax_step, softcapped_logits


@triton.jit
def student_teacher_logits(
    hs_ptr, ws_ptr, bs_ptr, ht_ptr, wt_ptr, bt_ptr,
    rows, cols, row_mask, col_mask, HS, HT, inv_temperature, s_softcap, t_softcap,
    S_HAS_BIAS: tl.constexpr, S_HAS_SOFTCAP: tl.constexpr, T_HAS_BIAS: tl.constexpr, T_HAS_SOFTCAP: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """The student's softcapped logits and both logit tiles at the temperature ``[BLOCK_N, BLOCK_V]`` (fp32)."""
    acc = linear_tile(hs_ptr, ws_ptr, rows, cols, row_mask, col_mask, HS, BLOCK_N, BLOCK_V, BLOCK_H, DOT_PRECISION)
    capped, zs = softcapped_logits(acc, bs_ptr, cols, col_mask, inv_temperature, s_softcap, S_HAS_BIAS,
                                   S_HAS_SOFTCAP)
    acc = linear_tile(ht_ptr, wt_ptr, rows, cols, row_mask, col_mask, HT, BLOCK_N, BLOCK_V, BLOCK_H, DOT_PRECISION)
    _, zt = softcapped_logits(acc, bt_ptr, cols, col_mask, inv_temperature, t_softcap, T_HAS_BIAS, T_HAS_SOFTCAP)
    return capped, zs, zt


@triton.jit
def mixture_logprobs(logp, logq, log1m_beta, log_beta):
    """``log((1 - beta) p + beta q)`` from the two logprob tiles, stably."""
    a = logp + log1m_beta
    b = logq + log_beta
    top = tl.maximum(a, b)
    return top + tl.log(tl.exp(a - top) + tl.exp(b - top))


@triton.jit
def distill_jsd_fwd_kernel(
    hs_ptr, ws_ptr, bs_ptr, ht_ptr, wt_ptr, bt_ptr, s_lse_ptr, t_lse_ptr,
    div_ptr, aux_ptr,
    N, V, HS, HT, v_per_split, inv_temperature, s_softcap, t_softcap, beta, log1m_beta, log_beta,
    S_HAS_BIAS: tl.constexpr, S_HAS_SOFTCAP: tl.constexpr, T_HAS_BIAS: tl.constexpr, T_HAS_SOFTCAP: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Grid ``(token blocks, vocab splits)``: partial JSD and ``KL(p || m)`` ``[splits, N]`` of each split, from
    both logsumexps (the mixture needs them final)."""
    split, rows, row_mask, v_begin, v_end = split_program(N, V, v_per_split, BLOCK_N)
    s_lse = tl.load(s_lse_ptr + rows, mask=row_mask, other=0.0)
    t_lse = tl.load(t_lse_ptr + rows, mask=row_mask, other=0.0)
    div = tl.zeros((BLOCK_N,), dtype=tl.float32)
    aux = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for v0 in range(v_begin, v_end, BLOCK_V):
        cols, col_mask = vocab_block(v0, v_end, BLOCK_V)
        _, zs, zt = student_teacher_logits(
            hs_ptr, ws_ptr, bs_ptr, ht_ptr, wt_ptr, bt_ptr,
            rows, cols, row_mask, col_mask, HS, HT, inv_temperature, s_softcap, t_softcap,
            S_HAS_BIAS, S_HAS_SOFTCAP, T_HAS_BIAS, T_HAS_SOFTCAP, BLOCK_N, BLOCK_V, BLOCK_H, DOT_PRECISION,
        )
        logp = zs - s_lse[:, None]
        logq = zt - t_lse[:, None]
        valid = row_mask[:, None] & col_mask[None, :]
        logm = mixture_logprobs(logp, logq, log1m_beta, log_beta)
        kl_pm = tl.sum(tl.where(valid, tl.exp(logp) * (logp - logm), 0.0), axis=1)
        kl_qm = tl.sum(tl.where(valid, tl.exp(logq) * (logq - logm), 0.0), axis=1)
        div += beta * kl_qm + (1.0 - beta) * kl_pm
        aux += kl_pm
    out = split * N + rows
    tl.store(div_ptr + out, div, mask=row_mask)
    tl.store(aux_ptr + out, aux, mask=row_mask)


@triton.jit
def distill_kl_fwd_kernel(
    hs_ptr, ws_ptr, bs_ptr, ht_ptr, wt_ptr, bt_ptr,
    s_max_ptr, s_sum_ptr, t_max_ptr, t_sum_ptr, cross_ptr,
    N, V, HS, HT, v_per_split, inv_temperature, s_softcap, t_softcap,
    REVERSE: tl.constexpr,
    S_HAS_BIAS: tl.constexpr, S_HAS_SOFTCAP: tl.constexpr, T_HAS_BIAS: tl.constexpr, T_HAS_SOFTCAP: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Grid ``(token blocks, vocab splits)``, one pass for forward and reverse KL: per split, both models' online
    max and sum-exp and the cross sum ``sum e^(t - max_t) (t - s)`` (forward) or ``sum e^(s - max_s) (s - t)``
    (``REVERSE``), each ``[splits, N]``; the host merges the splits into the logsumexps and the KL."""
    split, rows, row_mask, v_begin, v_end = split_program(N, V, v_per_split, BLOCK_N)
    s_max = tl.full((BLOCK_N,), NEG_INIT, dtype=tl.float32)
    t_max = tl.full((BLOCK_N,), NEG_INIT, dtype=tl.float32)
    s_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    t_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    cross = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for v0 in range(v_begin, v_end, BLOCK_V):
        cols, col_mask = vocab_block(v0, v_end, BLOCK_V)
        _, zs, zt = student_teacher_logits(
            hs_ptr, ws_ptr, bs_ptr, ht_ptr, wt_ptr, bt_ptr,
            rows, cols, row_mask, col_mask, HS, HT, inv_temperature, s_softcap, t_softcap,
            S_HAS_BIAS, S_HAS_SOFTCAP, T_HAS_BIAS, T_HAS_SOFTCAP, BLOCK_N, BLOCK_V, BLOCK_H, DOT_PRECISION,
        )
        new_s_max, es, s_scale = online_softmax_step(s_max, zs, col_mask)
        new_t_max, et, t_scale = online_softmax_step(t_max, zt, col_mask)
        s_sum = s_scale * s_sum + tl.sum(es, axis=1)
        t_sum = t_scale * t_sum + tl.sum(et, axis=1)
        gap = tl.where(col_mask[None, :], zt - zs, 0.0)
        if REVERSE:
            cross = s_scale * cross - tl.sum(es * gap, axis=1)
        else:
            cross = t_scale * cross + tl.sum(et * gap, axis=1)
        s_max = new_s_max
        t_max = new_t_max
    out = split * N + rows
    tl.store(s_max_ptr + out, s_max, mask=row_mask)
    tl.store(s_sum_ptr + out, s_sum, mask=row_mask)
    tl.store(t_max_ptr + out, t_max, mask=row_mask)
    tl.store(t_sum_ptr + out, t_sum, mask=row_mask)
    tl.store(cross_ptr + out, cross, mask=row_mask)


@triton.jit
def distill_grad_store_kernel(
    hs_ptr, ws_ptr, bs_ptr, ht_ptr, wt_ptr, bt_ptr, s_lse_ptr, t_lse_ptr, aux_ptr, g_ptr,
    dz_ptr, db_ptr,
    N, col_start, col_stop, HS, HT, inv_temperature, s_softcap, t_softcap, beta, log1m_beta, log_beta,
    DIVERGENCE: tl.constexpr, NEED_DB: tl.constexpr,
    S_HAS_BIAS: tl.constexpr, S_HAS_SOFTCAP: tl.constexpr, T_HAS_BIAS: tl.constexpr, T_HAS_SOFTCAP: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Grid ``(token blocks, vocab blocks of [col_start, col_stop))``: the student's logit gradient of
    ``sum_n g_n * divergence_n`` into a row-major ``[N, col_stop - col_start]`` buffer in the input dtype;
    the bias gradient by fp32 atomics."""
    rows, cols, row_mask, col_mask = tile_program(N, col_start, col_stop, BLOCK_N, BLOCK_V)
    capped, zs, zt = student_teacher_logits(
        hs_ptr, ws_ptr, bs_ptr, ht_ptr, wt_ptr, bt_ptr,
        rows, cols, row_mask, col_mask, HS, HT, inv_temperature, s_softcap, t_softcap,
        S_HAS_BIAS, S_HAS_SOFTCAP, T_HAS_BIAS, T_HAS_SOFTCAP, BLOCK_N, BLOCK_V, BLOCK_H, DOT_PRECISION,
    )
    logp = zs - tl.load(s_lse_ptr + rows, mask=row_mask, other=0.0)[:, None]
    logq = zt - tl.load(t_lse_ptr + rows, mask=row_mask, other=0.0)[:, None]
    p = tl.exp(logp)
    aux = tl.load(aux_ptr + rows, mask=row_mask, other=0.0)[:, None]
    if DIVERGENCE == 0:
        dz = p - tl.exp(logq)
    elif DIVERGENCE == 1:
        dz = p * (logp - logq - aux)
    else:
        dz = (1.0 - beta) * p * (logp - mixture_logprobs(logp, logq, log1m_beta, log_beta) - aux)
    dz *= tl.load(g_ptr + rows, mask=row_mask, other=0.0)[:, None] * inv_temperature
    if S_HAS_SOFTCAP:
        ratio = capped / s_softcap
        dz *= 1.0 - ratio * ratio
    dz = tl.where(row_mask[:, None] & col_mask[None, :], dz, 0.0)
    if NEED_DB:
        tl.atomic_add(db_ptr + cols, tl.sum(dz, axis=0), mask=col_mask)
    width = col_stop - col_start
    out = dz_ptr + rows[:, None] * width + (cols - col_start)[None, :]
    tl.store(out, dz.to(dz_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])
