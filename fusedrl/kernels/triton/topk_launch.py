"""Host side of the Triton ``linear_topk``: tile sizes, vocab splits, and the merge of splits."""
from __future__ import annotations

import torch
import triton

from ..topk_keys import top_keys, unpack_keys
from .launch import vocab_splits
from .launch_config import TileConfig, dot_precision, interpreter_active, tile_config
from .topk_fwd import linear_topk_fwd_kernel

TILE_ELEMENTS = 4096  # int64 keys per tile: keeps the sort network in registers on sm_90 (k <= 128)


def topk_tile_config(dtype: torch.dtype, k_pad: int, interpreting: bool | None = None) -> TileConfig:
    """``tile_config`` with ``block_v >= k_pad`` and, on GPU, at most ``TILE_ELEMENTS`` keys per tile."""
    interpreting = interpreter_active() if interpreting is None else interpreting
    base = tile_config(dtype, interpreting)
    block_v = max(base.block_v, k_pad)
    if interpreting:
        return base._replace(block_v=block_v)
    block_n = max(16, min(base.block_n, TILE_ELEMENTS // block_v))
    return base._replace(block_n=block_n, block_v=block_v, num_warps=8)


def triton_topk(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, k: int, temperature: float,
    softcap: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` logprobs ``[N, k]`` fp32 and ids ``[N, k]`` int64; hidden ``[N, H]``, weight ``[V, H]`` contiguous."""
    (n, h), vocab = hidden.shape, weight.shape[0]
    dev = hidden.device
    k_pad = max(16, triton.next_power_of_2(k))
    cfg = topk_tile_config(hidden.dtype, k_pad)
    n_blocks, v_blocks = triton.cdiv(n, cfg.block_n), triton.cdiv(vocab, cfg.block_v)
    splits = vocab_splits(n_blocks, v_blocks, dev)
    v_per_split = triton.cdiv(v_blocks, splits) * cfg.block_v
    splits = triton.cdiv(vocab, v_per_split)
    part_max, part_sum = (torch.empty((splits, n), dtype=torch.float32, device=dev) for _ in range(2))
    part_keys = torch.empty((splits, n, k_pad), dtype=torch.int64, device=dev)
    linear_topk_fwd_kernel[(n_blocks, splits)](
        hidden, weight, bias if bias is not None else hidden,
        part_max, part_sum, part_keys,
        n, vocab, h, v_per_split, 1.0 / temperature, 1.0 if softcap is None else softcap,
        HAS_BIAS=bias is not None, HAS_SOFTCAP=softcap is not None,
        BLOCK_N=cfg.block_n, BLOCK_V=cfg.block_v, BLOCK_H=cfg.block_h, K_PAD=k_pad,
        LOG_BLOCK_V=cfg.block_v.bit_length() - 1, LOG_K_PAD=k_pad.bit_length() - 1,
        DOT_PRECISION=dot_precision(hidden.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    lse = torch.logsumexp(part_max + part_sum.log(), dim=0)
    keys = top_keys(part_keys.permute(1, 0, 2).reshape(n, splits * k_pad), k)
    z, ids = unpack_keys(keys)
    return z - lse[:, None], ids
