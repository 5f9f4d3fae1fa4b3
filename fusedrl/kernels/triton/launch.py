"""Host side of the Triton backend: block sizes, grids, and the merge of vocab splits.

Exposes the backend interface used by ``autograd``: ``forward_stats`` and
``backward_stats`` (see ``fusedrl.kernels.chunked`` for the torch twin).
"""
from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton

from ..stats import ForwardStats, LinearVocabProblem, StatsGrad
from .vocab_stats_bwd import vocab_stats_bwd_kernel
from .vocab_stats_fwd import vocab_stats_fwd_kernel


class TileConfig(NamedTuple):
    """Block sizes and launch options of one kernel call."""

    block_n: int
    block_v: int
    block_h: int
    num_warps: int
    num_stages: int


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def tile_config(dtype: torch.dtype, interpreting: bool | None = None) -> TileConfig:
    """Tiles for ``dtype``: tensor-core friendly on GPU, tiny under the CPU interpreter (default: from the env)."""
    if _interpreting() if interpreting is None else interpreting:
        return TileConfig(16, 32, 16, 1, 1)
    if dtype == torch.float32:
        return TileConfig(64, 64, 32, 4, 2)
    return TileConfig(128, 128, 64, 8, 3)


def dot_precision(dtype: torch.dtype, interpreting: bool | None = None) -> str:
    """``tl.dot`` precision: exact fp32 for fp32 inputs; fp32 copies under the interpreter (see ``tile_dot``)."""
    if _interpreting() if interpreting is None else interpreting:
        return "upcast"
    return "ieee" if dtype == torch.float32 else "tf32"


def _vocab_splits(n_token_blocks: int, n_vocab_blocks: int, device: torch.device) -> int:
    """Split the vocabulary so the forward grid fills the GPU (a few splits under the interpreter)."""
    if _interpreting() or device.type != "cuda":
        return min(3, n_vocab_blocks)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(n_vocab_blocks, triton.cdiv(2 * sms, n_token_blocks)))


def _scalar_args(problem: LinearVocabProblem):
    softcap = 1.0 if problem.softcap is None else float(problem.softcap)
    return 1.0 / problem.temperature, softcap


def forward_stats(problem: LinearVocabProblem, chunk_size: int | None = None) -> ForwardStats:
    """Target logits ``[N, K]``, lse, entropy, logit_sum ``[N]`` (fp32); ``chunk_size`` is unused here."""
    hidden, weight, ids = problem.hidden, problem.weight, problem.ids
    (n, h), vocab, k = hidden.shape, weight.shape[0], ids.shape[1]
    dev = hidden.device
    target = torch.zeros((n, k), dtype=torch.float32, device=dev)
    if n == 0:
        return ForwardStats(target, *(torch.zeros(0, dtype=torch.float32, device=dev) for _ in range(4)))
    cfg = tile_config(hidden.dtype)
    n_blocks, v_blocks = triton.cdiv(n, cfg.block_n), triton.cdiv(vocab, cfg.block_v)
    splits = _vocab_splits(n_blocks, v_blocks, dev)
    v_per_split = triton.cdiv(v_blocks, splits) * cfg.block_v
    splits = triton.cdiv(vocab, v_per_split)
    part_max, part_sum, part_ent, part_logit_sum = (
        torch.empty((splits, n), dtype=torch.float32, device=dev) for _ in range(4)
    )
    inv_t, softcap = _scalar_args(problem)
    vocab_stats_fwd_kernel[(n_blocks, splits)](
        hidden, weight, problem.bias if problem.bias is not None else hidden, ids,
        part_max, part_sum, part_ent, part_logit_sum, target,
        n, vocab, h, k, v_per_split, inv_t, softcap,
        HAS_BIAS=problem.bias is not None, HAS_SOFTCAP=problem.softcap is not None,
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
    return ForwardStats(target, lse, entropy, part_logit_sum.sum(0), row_max)


def backward_stats(
    problem: LinearVocabProblem,
    lse: torch.Tensor,
    grad: StatsGrad,
    need_hidden: bool,
    need_weight: bool,
    need_bias: bool,
    chunk_size: int | None = None,
):
    """Gradients (hidden in its dtype, weight fp32, bias fp32); None where not needed."""
    hidden, weight, ids = problem.hidden, problem.weight, problem.ids
    (n, h), vocab, k = hidden.shape, weight.shape[0], ids.shape[1]
    dev = hidden.device
    d_hidden = torch.zeros((n, h), dtype=torch.float32, device=dev) if need_hidden else None
    d_weight = torch.zeros((vocab, h), dtype=torch.float32, device=dev) if need_weight else None
    d_bias = torch.zeros(vocab, dtype=torch.float32, device=dev) if need_bias else None
    if n > 0:
        cfg = tile_config(hidden.dtype)
        inv_t, softcap = _scalar_args(problem)
        dummy = grad.coef_a
        grid = (triton.cdiv(n, cfg.block_n), triton.cdiv(vocab, cfg.block_v))
        vocab_stats_bwd_kernel[grid](
            hidden, weight, problem.bias if problem.bias is not None else hidden, ids,
            lse, grad.target, grad.coef_a,
            grad.coef_c if grad.coef_c is not None else dummy,
            grad.logit_sum if grad.logit_sum is not None else dummy,
            d_hidden if need_hidden else dummy, d_weight if need_weight else dummy, d_bias if need_bias else dummy,
            n, vocab, h, k, inv_t, softcap,
            HAS_BIAS=problem.bias is not None, HAS_SOFTCAP=problem.softcap is not None,
            HAS_COEF_C=grad.coef_c is not None, HAS_LOGIT_SUM_GRAD=grad.logit_sum is not None,
            NEED_DH=need_hidden, NEED_DW=need_weight, NEED_DB=need_bias,
            BLOCK_N=cfg.block_n, BLOCK_V=cfg.block_v, BLOCK_H=cfg.block_h,
            DOT_PRECISION=dot_precision(hidden.dtype),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    if d_hidden is not None:
        d_hidden = d_hidden.to(hidden.dtype)
    return d_hidden, d_weight, d_bias
