"""Triton backward kernel: gradients of the per-token vocab statistics.

Grid ``(token blocks, vocab blocks)``. Each program recomputes its logit tile,
forms the logit gradient

    dz = p * (coef_a - coef_c * logp) + g_logit_sum + sum_k g_k * onehot(ids_k)

(see ``stats.StatsGrad``), maps it back through softcap and temperature, casts it
to the input dtype once, and adds ``dz @ W_tile`` into the fp32 hidden gradient
and ``dz.T @ h_tile`` into the fp32 weight gradient, one ``BLOCK_H`` slice at a
time. Tiles of different programs overlap in those outputs, so the adds are
fp32 atomics; the weight gradient is skipped entirely when it is not needed.
"""
import triton
import triton.language as tl

from .vocab_stats_fwd import linear_tile, softcapped_logits, tile_dot


@triton.jit
def vocab_stats_bwd_kernel(
    h_ptr, w_ptr, b_ptr, ids_ptr,
    lse_ptr, g_target_ptr, coef_a_ptr, coef_c_ptr, g_logit_sum_ptr,
    dh_ptr, dw_ptr, db_ptr,
    N, V, H, K, inv_temperature, softcap,
    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    HAS_COEF_C: tl.constexpr, HAS_LOGIT_SUM_GRAD: tl.constexpr,
    NEED_DH: tl.constexpr, NEED_DW: tl.constexpr, NEED_DB: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    rows = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    cols = (pid_v * BLOCK_V + tl.arange(0, BLOCK_V)).to(tl.int64)
    row_mask = rows < N
    col_mask = cols < V
    tile_mask = row_mask[:, None] & col_mask[None, :]

    acc = linear_tile(h_ptr, w_ptr, rows, cols, row_mask, col_mask, H, BLOCK_N, BLOCK_V, BLOCK_H, DOT_PRECISION)
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
    dz = tl.where(tile_mask, dz * inv_temperature, 0.0)

    if NEED_DB:
        tl.atomic_add(db_ptr + cols, tl.sum(dz, axis=0), mask=col_mask)
    dz_in = dz.to(h_ptr.dtype.element_ty)
    for h0 in range(0, H, BLOCK_H):
        hk = h0 + tl.arange(0, BLOCK_H)
        h_mask = hk < H
        if NEED_DH:
            w = tl.load(w_ptr + cols[:, None] * H + hk[None, :], mask=col_mask[:, None] & h_mask[None, :], other=0.0)
            part_h = tile_dot(dz_in, w, None, DOT_PRECISION)
            tl.atomic_add(dh_ptr + rows[:, None] * H + hk[None, :], part_h,
                          mask=row_mask[:, None] & h_mask[None, :])
        if NEED_DW:
            a = tl.load(h_ptr + rows[:, None] * H + hk[None, :], mask=row_mask[:, None] & h_mask[None, :], other=0.0)
            part_w = tile_dot(tl.trans(dz_in), a, None, DOT_PRECISION)
            tl.atomic_add(dw_ptr + cols[:, None] * H + hk[None, :], part_w,
                          mask=col_mask[:, None] & h_mask[None, :])
