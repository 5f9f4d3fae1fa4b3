"""Triton forward kernel: per-token vocab statistics streamed over vocab blocks.

Grid ``(token blocks, vocab splits)``. Each program owns ``BLOCK_N`` tokens and
one contiguous vocab range; it recomputes logits tile by tile
(``BLOCK_N x BLOCK_V``, fp32 accumulator over ``BLOCK_H`` slices of H), keeps an
online max / sum-exp / sum-exp-weighted-logit / logit-sum / sum-exp-squared per token, and stores
each target logit from the tile that holds it. Partial statistics of the
splits are merged by ``launch.forward_stats``.

The entropy accumulator is ``sum_v e^(z_v - m) (z_v - m)`` (relative to the
running max), so entropy keeps full precision for logits of magnitude 1e4.
"""
import triton
import triton.language as tl

from .program_tiles import hidden_rows, split_program, vocab_block

NEG_INIT = tl.constexpr(-1.0e30)  # compiled kernels read only constexpr globals


@triton.jit
def tile_dot(a, b, acc, DOT_PRECISION: tl.constexpr):
    """``acc + a @ b`` in fp32. ``DOT_PRECISION == "upcast"`` multiplies fp32 copies (used under the
    CPU interpreter, whose bf16 ``tl.dot`` reads the raw bits as integers); exact for bf16/fp16 inputs."""
    if DOT_PRECISION == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc=acc, input_precision="ieee")
    return tl.dot(a, b, acc=acc, input_precision=DOT_PRECISION)


@triton.jit
def softcapped_logits(acc, b_ptr, cols, col_mask, inv_temperature, softcap,
                      HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr):
    """Turn an fp32 ``h @ W.T`` tile into ``softcap(. + b) / T``; also return the capped value."""
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    capped = acc
    if HAS_SOFTCAP:
        e2x = tl.exp(2.0 * acc / softcap)
        capped = softcap * (1.0 - 2.0 / (e2x + 1.0))
    return capped, capped * inv_temperature


@triton.jit
def linear_tile(h_ptr, w_ptr, rows, cols, row_mask, col_mask, H,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                DOT_PRECISION: tl.constexpr):
    """fp32 tile ``hidden[rows] @ weight[cols].T`` of shape ``[BLOCK_N, BLOCK_V]`` (64-bit offsets)."""
    rows = rows.to(tl.int64)
    cols = cols.to(tl.int64)
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        hk = h0 + tl.arange(0, BLOCK_H)
        h_mask = hk < H
        a = tl.load(h_ptr + rows[:, None] * H + hk[None, :], mask=row_mask[:, None] & h_mask[None, :], other=0.0)
        w = tl.load(w_ptr + cols[:, None] * H + hk[None, :], mask=col_mask[:, None] & h_mask[None, :], other=0.0)
        acc = tile_dot(a, tl.trans(w), acc, DOT_PRECISION)
    return acc


@triton.jit
def online_softmax_step(run_max, z, col_mask):
    """One tile of an online softmax over ``z [BLOCK_N, BLOCK_V]``: the new running max ``[BLOCK_N]``,
    ``e = exp(z - new max)`` (0 outside ``col_mask``) and ``alpha = exp(run_max - new max)``, the factor that
    rescales sums kept relative to the old max."""
    new_max = tl.maximum(run_max, tl.max(tl.where(col_mask[None, :], z, NEG_INIT), axis=1))
    e = tl.where(col_mask[None, :], tl.exp(z - new_max[:, None]), 0.0)
    return new_max, e, tl.exp(run_max - new_max)


@triton.jit
def vocab_stats_fwd_kernel(
    h_ptr, row_map_ptr, w_ptr, b_ptr, ids_ptr,
    max_ptr, sumexp_ptr, ent_ptr, logit_sum_ptr, sq_sum_ptr, target_ptr,
    N, V, H, K, v_per_split, inv_temperature, softcap,
    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_ROW_MAP: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    split, rows, row_mask, v_begin, v_end = split_program(N, V, v_per_split, BLOCK_N)
    h_rows = hidden_rows(rows, row_mask, row_map_ptr, HAS_ROW_MAP)

    run_max = tl.full((BLOCK_N,), NEG_INIT, dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    run_ent = tl.zeros((BLOCK_N,), dtype=tl.float32)
    run_logit_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    run_sq_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for v0 in range(v_begin, v_end, BLOCK_V):
        cols, col_mask = vocab_block(v0, v_end, BLOCK_V)
        acc = linear_tile(h_ptr, w_ptr, h_rows, cols, row_mask, col_mask, H,
                          BLOCK_N, BLOCK_V, BLOCK_H, DOT_PRECISION)
        _, z = softcapped_logits(acc, b_ptr, cols, col_mask, inv_temperature, softcap, HAS_BIAS, HAS_SOFTCAP)

        for k in range(0, K):
            idk = tl.load(ids_ptr + rows * K + k, mask=row_mask, other=-1)
            hit = (idk >= v0) & (idk < v0 + BLOCK_V) & (idk < v_end) & row_mask
            picked = tl.sum(tl.where(cols[None, :] == idk[:, None], z, 0.0), axis=1)
            tl.store(target_ptr + rows * K + k, picked, mask=hit)

        new_max, e, alpha = online_softmax_step(run_max, z, col_mask)
        shift = tl.where(col_mask[None, :], z - new_max[:, None], 0.0)
        run_ent = alpha * (run_ent + (run_max - new_max) * run_sum) + tl.sum(e * shift, axis=1)
        run_sum = alpha * run_sum + tl.sum(e, axis=1)
        run_sq_sum = alpha * alpha * run_sq_sum + tl.sum(e * e, axis=1)
        run_logit_sum += tl.sum(tl.where(col_mask[None, :], z, 0.0), axis=1)
        run_max = new_max

    out = split * N + rows
    tl.store(max_ptr + out, run_max, mask=row_mask)
    tl.store(sumexp_ptr + out, run_sum, mask=row_mask)
    tl.store(ent_ptr + out, run_ent, mask=row_mask)
    tl.store(logit_sum_ptr + out, run_logit_sum, mask=row_mask)
    tl.store(sq_sum_ptr + out, run_sq_sum, mask=row_mask)
