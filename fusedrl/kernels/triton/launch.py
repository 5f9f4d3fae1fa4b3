"""Host side of the Triton backend: the forward grid and the merge of vocab splits.

Exposes the backend interface used by ``autograd``: ``forward_stats`` here and
``backward_stats`` from ``backward_launch`` (see ``fusedrl.kernels.chunked`` for the torch twin).
"""
from __future__ import annotations

import torch
import triton

from ..stats import ForwardStats, LinearVocabProblem
from .backward_launch import backward_stats, row_map_arg
from .launch_config import dot_precision, interpreter_active, scalar_args, tile_config
from .vocab_stats_fwd import vocab_stats_fwd_kernel

__all__ = ["backward_stats", "forward_stats", "vocab_splits"]


def vocab_splits(n_token_blocks: int, n_vocab_blocks: int, device: torch.device) -> int:
    """Split the vocabulary so the forward grid fills the GPU (a few splits under the interpreter)."""
    if interpreter_active() or device.type != "cuda":
        return min(3, n_vocab_blocks)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(n_vocab_blocks, triton.cdiv(2 * sms, n_token_blocks)))


def forward_stats(problem: LinearVocabProblem, chunk_size: int | None = None) -> ForwardStats:
    """Target logits ``[M, K]``; lse, entropy, logit_sum, max logit, ``log sum p**2`` ``[M]`` (fp32) of the
    problem's M tokens. ``chunk_size`` is unused here."""
    hidden, weight, ids = problem.hidden, problem.weight, problem.ids
    n, h = problem.num_tokens, hidden.shape[1]
    vocab, k = weight.shape[0], ids.shape[1]
    dev = hidden.device
    target = torch.zeros((n, k), dtype=torch.float32, device=dev)
    if n == 0:
        return ForwardStats(target, *(torch.zeros(0, dtype=torch.float32, device=dev) for _ in range(5)))
    cfg = tile_config(hidden.dtype)
    n_blocks, v_blocks = triton.cdiv(n, cfg.block_n), triton.cdiv(vocab, cfg.block_v)
    splits = vocab_splits(n_blocks, v_blocks, dev)
    v_per_split = triton.cdiv(v_blocks, splits) * cfg.block_v
    splits = triton.cdiv(vocab, v_per_split)
    part_max, part_sum, part_ent, part_logit_sum, part_sq_sum = (
        torch.empty((splits, n), dtype=torch.float32, device=dev) for _ in range(5)
    )
    inv_t, softcap = scalar_args(problem)
    vocab_stats_fwd_kernel[(n_blocks, splits)](
        hidden, row_map_arg(problem, 0, n), weight, problem.bias if problem.bias is not None else hidden, ids,
        part_max, part_sum, part_ent, part_logit_sum, part_sq_sum, target,
        n, vocab, h, k, v_per_split, inv_t, softcap,
        HAS_BIAS=problem.bias is not None, HAS_SOFTCAP=problem.softcap is not None,
        HAS_ROW_MAP=problem.token_rows is not None,
        BLOCK_N=cfg.block_n, BLOCK_V=cfg.block_v, BLOCK_H=cfg.block_h,
        DOT_PRECISION=dot_precision(hidden.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    row_max = part_max.max(0).values
    scale = torch.exp(part_max - row_max)
    sumexp = (scale * part_sum).sum(0)
    ent_acc = (scale * (part_ent + (part_max - row_max) * part_sum)).sum(0)
    log_sumexp = torch.log(sumexp)
    lse = row_max + log_sumexp
    entropy = log_sumexp - ent_acc / sumexp
    log_sum_p_sq = torch.log((scale.square() * part_sq_sum).sum(0)) - 2.0 * log_sumexp
    return ForwardStats(target, lse, entropy, part_logit_sum.sum(0), row_max, log_sum_p_sq)
