"""Triton backward kernel of the ``atomic`` strategy: one fused pass, fp32 atomics.

Grid ``(token blocks, vocab blocks)``. Each program recomputes its logit-gradient tile
(``logit_grad.logit_grad_tile``), casts it to the input dtype once, and adds
``dz @ W_tile`` into the fp32 hidden gradient and ``dz.T @ h_tile`` into the fp32
weight gradient, one ``BLOCK_H`` slice at a time (each from a zero accumulator: Triton 3.3 cannot
compile ``tl.dot`` with ``acc=None`` passed through a function). Tiles of different programs
overlap in those outputs, so the adds are fp32 atomics; the weight gradient is
skipped entirely when it is not needed.
"""
import triton
import triton.language as tl

from .logit_grad import logit_grad_tile
from .program_tiles import hidden_rows, tile_program
from .vocab_stats_fwd import tile_dot


@triton.jit
def vocab_stats_bwd_kernel(
    h_ptr, row_map_ptr, w_ptr, b_ptr, ids_ptr,
    lse_ptr, g_target_ptr, coef_a_ptr, coef_c_ptr, g_logit_sum_ptr,
    dh_ptr, dw_ptr, db_ptr,
    N, V, H, K, inv_temperature, softcap,
    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_ROW_MAP: tl.constexpr,
    HAS_COEF_C: tl.constexpr, HAS_LOGIT_SUM_GRAD: tl.constexpr,
    NEED_DH: tl.constexpr, NEED_DW: tl.constexpr, NEED_DB: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    rows, cols, row_mask, col_mask = tile_program(N, 0, V, BLOCK_N, BLOCK_V)
    h_rows = hidden_rows(rows, row_mask, row_map_ptr, HAS_ROW_MAP)
    dz = logit_grad_tile(
        h_ptr, w_ptr, b_ptr, ids_ptr, lse_ptr, g_target_ptr, coef_a_ptr, coef_c_ptr, g_logit_sum_ptr,
        rows, h_rows, cols, row_mask, col_mask, H, K, inv_temperature, softcap,
        HAS_BIAS, HAS_SOFTCAP, HAS_COEF_C, HAS_LOGIT_SUM_GRAD, BLOCK_N, BLOCK_V, BLOCK_H, DOT_PRECISION,
    )

    if NEED_DB:
        tl.atomic_add(db_ptr + cols, tl.sum(dz, axis=0), mask=col_mask)
    dz_in = dz.to(h_ptr.dtype.element_ty)
    for h0 in range(0, H, BLOCK_H):
        hk = h0 + tl.arange(0, BLOCK_H)
        h_mask = hk < H
        if NEED_DH:
            w = tl.load(w_ptr + cols[:, None] * H + hk[None, :], mask=col_mask[:, None] & h_mask[None, :], other=0.0)
            part_h = tile_dot(dz_in, w, tl.zeros((BLOCK_N, BLOCK_H), dtype=tl.float32), DOT_PRECISION)
            tl.atomic_add(dh_ptr + rows[:, None] * H + hk[None, :], part_h,
                          mask=row_mask[:, None] & h_mask[None, :])
        if NEED_DW:
            a = tl.load(h_ptr + h_rows[:, None] * H + hk[None, :], mask=row_mask[:, None] & h_mask[None, :],
                        other=0.0)
            part_w = tile_dot(tl.trans(dz_in), a, tl.zeros((BLOCK_V, BLOCK_H), dtype=tl.float32), DOT_PRECISION)
            tl.atomic_add(dw_ptr + cols[:, None] * H + hk[None, :], part_w,
                          mask=col_mask[:, None] & h_mask[None, :])
