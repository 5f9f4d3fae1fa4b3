"""Triton logit-gradient tile, shared by both backward strategies.

For one ``BLOCK_N x BLOCK_V`` tile the kernel recomputes the logits and forms

    dz = p * (coef_a - coef_c * logp) + g_logit_sum + sum_k g_k * onehot(ids_k)

(see ``stats.StatsGrad``), mapped back through softcap and temperature, zero outside
the tile's masks. ``logit_grad_store_kernel`` writes it, in the input dtype, into a
bounded ``[chunk tokens, chunk vocab]`` buffer for the ``split`` backward, which then
multiplies it with ``matmul_acc``; ``vocab_stats_bwd`` (the ``atomic`` backward) consumes it in registers.
"""
import triton
import triton.language as tl

from .program_tiles import hidden_rows, tile_program
from .vocab_stats_fwd import linear_tile, softcapped_logits


@triton.jit
def logit_grad_tile(
    h_ptr, w_ptr, b_ptr, ids_ptr,
    lse_ptr, g_target_ptr, coef_a_ptr, coef_c_ptr, g_logit_sum_ptr,
    rows, h_rows, cols, row_mask, col_mask,
    H, K, inv_temperature, softcap,
    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    HAS_COEF_C: tl.constexpr, HAS_LOGIT_SUM_GRAD: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """fp32 ``dL/d(h @ W.T + b)`` of tokens ``rows`` (hidden rows ``h_rows``) and vocab ids ``cols``
    (``[BLOCK_N, BLOCK_V]``)."""
    acc = linear_tile(h_ptr, w_ptr, h_rows, cols, row_mask, col_mask, H, BLOCK_N, BLOCK_V, BLOCK_H, DOT_PRECISION)
    capped, z = softcapped_logits(acc, b_ptr, cols, col_mask, inv_temperature, softcap, HAS_BIAS, HAS_SOFTCAP)

    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    logp = z - lse[:, None]
    scale = tl.load(coef_a_ptr + rows, mask=row_mask, other=0.0)[:, None]
    if HAS_COEF_C:
        scale -= tl.load(coef_c_ptr + rows, mask=row_mask, other=0.0)[:, None] * logp
    dz = tl.exp(logp) * scale
    if HAS_LOGIT_SUM_GRAD:
        dz += tl.load(g_logit_sum_ptr + rows, mask=row_mask, other=0.0)[:, None]
    for k in range(0, K):
        idk = tl.load(ids_ptr + rows * K + k, mask=row_mask, other=-1)
        gk = tl.load(g_target_ptr + rows * K + k, mask=row_mask, other=0.0)
        dz += tl.where(cols[None, :] == idk[:, None], gk[:, None], 0.0)
    if HAS_SOFTCAP:
        ratio = capped / softcap
        dz *= 1.0 - ratio * ratio
    return tl.where(row_mask[:, None] & col_mask[None, :], dz * inv_temperature, 0.0)


@triton.jit
def logit_grad_store_kernel(
    h_ptr, row_map_ptr, w_ptr, b_ptr, ids_ptr,
    lse_ptr, g_target_ptr, coef_a_ptr, coef_c_ptr, g_logit_sum_ptr,
    dz_ptr, db_ptr,
    N, col_start, col_stop, H, K, inv_temperature, softcap,
    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_ROW_MAP: tl.constexpr,
    HAS_COEF_C: tl.constexpr, HAS_LOGIT_SUM_GRAD: tl.constexpr, NEED_DB: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Grid ``(token blocks, vocab blocks of [col_start, col_stop))``: ``dz`` of ``N`` tokens into a
    row-major ``[N, col_stop - col_start]`` buffer in the input dtype; bias gradient by fp32 atomics."""
    rows, cols, row_mask, col_mask = tile_program(N, col_start, col_stop, BLOCK_N, BLOCK_V)
    h_rows = hidden_rows(rows, row_mask, row_map_ptr, HAS_ROW_MAP)
    dz = logit_grad_tile(
        h_ptr, w_ptr, b_ptr, ids_ptr, lse_ptr, g_target_ptr, coef_a_ptr, coef_c_ptr, g_logit_sum_ptr,
        rows, h_rows, cols, row_mask, col_mask, H, K, inv_temperature, softcap,
        HAS_BIAS, HAS_SOFTCAP, HAS_COEF_C, HAS_LOGIT_SUM_GRAD, BLOCK_N, BLOCK_V, BLOCK_H, DOT_PRECISION,
    )
    if NEED_DB:
        tl.atomic_add(db_ptr + cols, tl.sum(dz, axis=0), mask=col_mask)
    width = col_stop - col_start
    out = dz_ptr + rows[:, None] * width + (cols - col_start)[None, :]
    tl.store(out, dz.to(dz_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])
