"""Triton kernels of the full-vocabulary distillation divergence (see ``fusedrl.kernels.distill_chunked``).

Both kernels recompute a student tile and a teacher tile of logits (``BLOCK_N`` tokens x ``BLOCK_V``
vocab ids, each from its own hidden states and lm_head) and turn them into logprobs with the
logsumexps a first pass computed. ``distill_fwd_kernel`` sums the per-token divergence and its
gradient scalar ``aux`` over one vocab range per program (the host adds the ranges);
``distill_grad_store_kernel`` writes the student's logit gradient into a bounded ``[tokens, vocab]``
chunk for the ``split`` backward's GEMMs. ``DIVERGENCE``: 0 forward_kl, 1 reverse_kl, 2 jsd.
"""
import triton
import triton.language as tl

from .vocab_stats_fwd import linear_tile, softcapped_logits


@triton.jit
def student_teacher_logprobs(
    hs_ptr, ws_ptr, bs_ptr, ht_ptr, wt_ptr, bt_ptr, s_lse_ptr, t_lse_ptr,
    rows, cols, row_mask, col_mask, HS, HT, inv_temperature, s_softcap, t_softcap,
    S_HAS_BIAS: tl.constexpr, S_HAS_SOFTCAP: tl.constexpr, T_HAS_BIAS: tl.constexpr, T_HAS_SOFTCAP: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """The student's softcapped logits and both logprob tiles ``[BLOCK_N, BLOCK_V]`` (fp32)."""
    acc = linear_tile(hs_ptr, ws_ptr, rows, cols, row_mask, col_mask, HS, BLOCK_N, BLOCK_V, BLOCK_H, DOT_PRECISION)
    capped, zs = softcapped_logits(acc, bs_ptr, cols, col_mask, inv_temperature, s_softcap, S_HAS_BIAS,
                                   S_HAS_SOFTCAP)
    acc = linear_tile(ht_ptr, wt_ptr, rows, cols, row_mask, col_mask, HT, BLOCK_N, BLOCK_V, BLOCK_H, DOT_PRECISION)
    _, zt = softcapped_logits(acc, bt_ptr, cols, col_mask, inv_temperature, t_softcap, T_HAS_BIAS, T_HAS_SOFTCAP)
    logp = zs - tl.load(s_lse_ptr + rows, mask=row_mask, other=0.0)[:, None]
    logq = zt - tl.load(t_lse_ptr + rows, mask=row_mask, other=0.0)[:, None]
    return capped, logp, logq


@triton.jit
def mixture_logprobs(logp, logq, log1m_beta, log_beta):
    """``log((1 - beta) p + beta q)`` from the two logprob tiles, stably."""
    a = logp + log1m_beta
    b = logq + log_beta
    top = tl.maximum(a, b)
    return top + tl.log(tl.exp(a - top) + tl.exp(b - top))


@triton.jit
def distill_fwd_kernel(
    hs_ptr, ws_ptr, bs_ptr, ht_ptr, wt_ptr, bt_ptr, s_lse_ptr, t_lse_ptr,
    div_ptr, aux_ptr,
    N, V, HS, HT, v_per_split, inv_temperature, s_softcap, t_softcap, beta, log1m_beta, log_beta,
    DIVERGENCE: tl.constexpr,
    S_HAS_BIAS: tl.constexpr, S_HAS_SOFTCAP: tl.constexpr, T_HAS_BIAS: tl.constexpr, T_HAS_SOFTCAP: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Grid ``(token blocks, vocab splits)``: partial divergence and aux ``[splits, N]`` of each split."""
    split = tl.program_id(1)
    rows = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    row_mask = rows < N
    v_begin = split * v_per_split
    v_end = tl.minimum(v_begin + v_per_split, V)
    div = tl.zeros((BLOCK_N,), dtype=tl.float32)
    aux = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for v0 in range(v_begin, v_end, BLOCK_V):
        cols = (v0 + tl.arange(0, BLOCK_V)).to(tl.int64)
        col_mask = cols < v_end
        _, logp, logq = student_teacher_logprobs(
            hs_ptr, ws_ptr, bs_ptr, ht_ptr, wt_ptr, bt_ptr, s_lse_ptr, t_lse_ptr,
            rows, cols, row_mask, col_mask, HS, HT, inv_temperature, s_softcap, t_softcap,
            S_HAS_BIAS, S_HAS_SOFTCAP, T_HAS_BIAS, T_HAS_SOFTCAP, BLOCK_N, BLOCK_V, BLOCK_H, DOT_PRECISION,
        )
        valid = row_mask[:, None] & col_mask[None, :]
        if DIVERGENCE == 0:
            div += tl.sum(tl.where(valid, tl.exp(logq) * (logq - logp), 0.0), axis=1)
        elif DIVERGENCE == 1:
            term = tl.sum(tl.where(valid, tl.exp(logp) * (logp - logq), 0.0), axis=1)
            div += term
            aux += term
        else:
            logm = mixture_logprobs(logp, logq, log1m_beta, log_beta)
            kl_pm = tl.sum(tl.where(valid, tl.exp(logp) * (logp - logm), 0.0), axis=1)
            kl_qm = tl.sum(tl.where(valid, tl.exp(logq) * (logq - logm), 0.0), axis=1)
            div += beta * kl_qm + (1.0 - beta) * kl_pm
            aux += kl_pm
    out = split * N + rows
    tl.store(div_ptr + out, div, mask=row_mask)
    tl.store(aux_ptr + out, aux, mask=row_mask)


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
    rows = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    cols = (col_start + tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)).to(tl.int64)
    row_mask = rows < N
    col_mask = cols < col_stop
    capped, logp, logq = student_teacher_logprobs(
        hs_ptr, ws_ptr, bs_ptr, ht_ptr, wt_ptr, bt_ptr, s_lse_ptr, t_lse_ptr,
        rows, cols, row_mask, col_mask, HS, HT, inv_temperature, s_softcap, t_softcap,
        S_HAS_BIAS, S_HAS_SOFTCAP, T_HAS_BIAS, T_HAS_SOFTCAP, BLOCK_N, BLOCK_V, BLOCK_H, DOT_PRECISION,
    )
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
