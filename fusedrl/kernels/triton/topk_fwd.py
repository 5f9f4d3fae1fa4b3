"""Triton kernel of ``linear_topk``: streaming top-k and logsumexp over vocab tiles.

Grid ``(token blocks, vocab splits)``. Each program owns ``BLOCK_N`` tokens and one
contiguous vocab range; per ``BLOCK_N x BLOCK_V`` logit tile (``linear_tile``) it
updates an online max / sum-exp per token and merges the tile into a running list
of the ``K_PAD`` best sortable keys per token (``fusedrl.kernels.topk_keys``):

1. sort the tile's keys ascending; the elementwise max over its
   ``BLOCK_V / K_PAD`` segments is the tile's top ``K_PAD``, ascending;
2. the elementwise max of the running list (descending) and that (ascending) is
   the top ``K_PAD`` of their union, as a bitonic row (a bitonic half-cleaner);
   a bitonic merge sorts it descending.

Per token and tile that is a bitonic sort of ``BLOCK_V`` keys and a merge of
``K_PAD`` (``topk_sort``): ``BLOCK_V log2(BLOCK_V)^2 / 4 + K_PAD log2(K_PAD) / 2``
int64 compare-exchanges, against ``2 H BLOCK_V`` flops for the logits. Each split
stores its max, sum-exp and ``K_PAD`` keys per token; the launcher merges the
splits (``topk_launch``).
"""
import triton
import triton.language as tl

from .program_tiles import split_program, vocab_block
from .topk_sort import bitonic_merge, bitonic_sort
from .vocab_stats_fwd import NEG_INIT, linear_tile, online_softmax_step, softcapped_logits

MIN_KEY = tl.constexpr(-(2**63))


@triton.jit
def sortable_keys(z, cols):
    """int64 keys ordering ``(z desc, col asc)``; the layout of ``topk_keys.pack_keys``."""
    bits = z.to(tl.int32, bitcast=True)
    bits = tl.where((bits & 0x7FFFFFFF) == 0, 0, bits)
    ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    return (ordered.to(tl.int64) << 32) | (0xFFFFFFFF - cols.to(tl.int64))


@triton.jit
def linear_topk_fwd_kernel(
    h_ptr, w_ptr, b_ptr,
    max_ptr, sumexp_ptr, keys_ptr,
    N, V, H, v_per_split, inv_temperature, softcap,
    HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, K_PAD: tl.constexpr,
    LOG_BLOCK_V: tl.constexpr, LOG_K_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    split, rows, row_mask, v_begin, v_end = split_program(N, V, v_per_split, BLOCK_N)

    run_max = tl.full((BLOCK_N,), NEG_INIT, dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    run_keys = tl.full((BLOCK_N, K_PAD), MIN_KEY, dtype=tl.int64)
    for v0 in range(v_begin, v_end, BLOCK_V):
        cols, col_mask = vocab_block(v0, v_end, BLOCK_V)
        acc = linear_tile(h_ptr, w_ptr, rows, cols, row_mask, col_mask, H,
                          BLOCK_N, BLOCK_V, BLOCK_H, DOT_PRECISION)
        _, z = softcapped_logits(acc, b_ptr, cols, col_mask, inv_temperature, softcap, HAS_BIAS, HAS_SOFTCAP)

        new_max, e, scale = online_softmax_step(run_max, z, col_mask)
        run_sum = run_sum * scale + tl.sum(e, axis=1)
        run_max = new_max

        keys = tl.where(col_mask[None, :], sortable_keys(z, cols[None, :]), MIN_KEY)
        tile_top = bitonic_sort(keys, BLOCK_N, BLOCK_V, LOG_BLOCK_V, False)
        if BLOCK_V > K_PAD:
            tile_top = tl.max(tl.reshape(tile_top, (BLOCK_N, BLOCK_V // K_PAD, K_PAD)), axis=1)
        run_keys = bitonic_merge(tl.maximum(run_keys, tile_top), BLOCK_N, K_PAD, LOG_K_PAD, True)

    out = split * N + rows
    tl.store(max_ptr + out, run_max, mask=row_mask)
    tl.store(sumexp_ptr + out, run_sum, mask=row_mask)
    slots = tl.arange(0, K_PAD)
    tl.store(keys_ptr + out[:, None] * K_PAD + slots[None, :], run_keys, mask=row_mask[:, None])
