"""Chunked pure-torch backend: bounded memory on any device.

Tokens are processed in chunks so that no tensor exceeds ``chunk_tokens x V``
elements. Logits are computed in fp32 from the inputs; the weight gradient
accumulates in an fp32 buffer and is cast once by the caller.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .stats import ForwardStats, LinearVocabProblem, StatsGrad, apply_softcap, gradient_buffers

DEFAULT_CHUNK_ELEMENTS = 1 << 23


def chunk_tokens_for(vocab: int, chunk_size: int | None) -> int:
    """Tokens per chunk: ``chunk_size`` if given, else as many as fit ``DEFAULT_CHUNK_ELEMENTS`` logits."""
    if chunk_size is not None:
        return max(1, int(chunk_size))
    return max(1, DEFAULT_CHUNK_ELEMENTS // vocab)


class ChunkLogits(NamedTuple):
    """A token chunk's fp32 logits ``z [chunk, V]``, the softcap's derivative ``1 - tanh^2 [chunk, V]`` (None
    without softcap) and the fp32 hidden rows ``[chunk, H]`` they came from."""

    z: torch.Tensor
    softcap_grad: torch.Tensor | None
    hidden32: torch.Tensor


def chunk_logits(problem: LinearVocabProblem, weight32: torch.Tensor, start: int, stop: int) -> ChunkLogits:
    """The logits of tokens ``[start, stop)``. Without softcap the logits buffer becomes ``z`` in place, so one
    ``[chunk, V]`` tensor is alive."""
    hidden32 = problem.token_hidden(start, stop).float()
    logits = hidden32 @ weight32.T
    if problem.bias is not None:
        logits += problem.bias.float()
    if problem.softcap is None:
        return ChunkLogits(logits.div_(problem.temperature), None, hidden32)
    capped = apply_softcap(logits, problem.softcap)
    del logits
    z = capped / problem.temperature
    return ChunkLogits(z, capped.div_(problem.softcap).square_().neg_().add_(1.0), hidden32)


def forward_stats(problem: LinearVocabProblem, chunk_size: int | None = None) -> ForwardStats:
    """Target logits, lse, entropy, logit sums, max logits and ``log sum p**2`` of every token computed (``[M]``),
    a token chunk at a time."""
    weight, ids = problem.weight, problem.ids
    n, vocab = problem.num_tokens, weight.shape[0]
    dev = weight.device
    target = torch.zeros(ids.shape, dtype=torch.float32, device=dev)
    lse = torch.empty(n, dtype=torch.float32, device=dev)
    entropy = torch.empty_like(lse)
    logit_sum = torch.empty_like(lse)
    max_logit = torch.empty_like(lse)
    log_sum_p_sq = torch.empty_like(lse)
    weight32 = weight.float()
    step = chunk_tokens_for(vocab, chunk_size)
    for start in range(0, n, step):
        stop = min(n, start + step)
        z = chunk_logits(problem, weight32, start, stop).z
        ids_c = ids[start:stop]
        target[start:stop] = torch.where(ids_c >= 0, z.gather(1, ids_c.clamp(min=0)), 0.0)
        logit_sum[start:stop] = z.sum(-1)
        max_logit[start:stop] = z.max(-1).values
        chunk_lse = torch.logsumexp(z, dim=-1)
        lse[start:stop] = chunk_lse
        logp = z.sub_(chunk_lse[:, None])
        p = logp.exp()
        entropy[start:stop] = -(p * logp).sum(-1)
        log_sum_p_sq[start:stop] = p.square_().sum(-1).log_()
    return ForwardStats(target, lse, entropy, logit_sum, max_logit, log_sum_p_sq)


def backward_stats(
    problem: LinearVocabProblem,
    lse: torch.Tensor,
    grad: StatsGrad,
    need_hidden: bool,
    need_weight: bool,
    need_bias: bool,
    chunk_size: int | None = None,
):
    """Gradients (hidden, weight fp32, bias fp32) from recomputed logits; None where not needed."""
    weight, ids = problem.weight, problem.ids
    n, vocab = problem.num_tokens, weight.shape[0]
    weight32 = weight.float()
    grads = gradient_buffers(problem, need_hidden, need_weight, need_bias)
    step = chunk_tokens_for(vocab, chunk_size)
    for start in range(0, n, step):
        stop = min(n, start + step)
        z, softcap_grad, hidden32 = chunk_logits(problem, weight32, start, stop)
        logp = z.sub_(lse[start:stop, None])
        scale = grad.coef_a[start:stop, None]
        if grad.coef_c is not None:
            scale = scale - grad.coef_c[start:stop, None] * logp
        dz = logp.exp_().mul_(scale)
        if grad.logit_sum is not None:
            dz += grad.logit_sum[start:stop, None]
        ids_c = ids[start:stop]
        dz.scatter_add_(1, ids_c.clamp(min=0), torch.where(ids_c >= 0, grad.target[start:stop], 0.0))
        if softcap_grad is not None:
            dz *= softcap_grad
        dz /= problem.temperature
        accumulate_logit_grad(dz, hidden32, problem, weight32, start, stop, grads)
    return grads


def accumulate_logit_grad(dz: torch.Tensor, hidden32: torch.Tensor, problem: LinearVocabProblem,
                          weight32: torch.Tensor, start: int, stop: int, grads: tuple) -> None:
    """Add the logit gradient ``dz [stop - start, V]`` (fp32) of tokens ``[start, stop)`` of ``problem``, whose
    fp32 hidden rows are ``hidden32 [stop - start, H]``, into ``grads`` (from ``gradient_buffers``): ``dz @ W``
    into their hidden rows, ``dz.T @ h`` into the weight, ``dz``'s column sums into the bias."""
    d_hidden, d_weight, d_bias = grads
    if d_hidden is not None:
        problem.store_token_rows(d_hidden, start, stop, (dz @ weight32).to(d_hidden.dtype))
    if d_weight is not None:
        d_weight.addmm_(dz.T, hidden32)
    if d_bias is not None:
        d_bias += dz.sum(0)
