"""Chunked pure-torch ``linear_topk``: bounded memory on any device.

The vocabulary is streamed in chunks of ``vocab_chunk`` rows of the weight (cast
to fp32 once per chunk), and each vocab chunk in token chunks, so no tensor
exceeds ``chunk_tokens x vocab_chunk`` logits (plus their int64 keys). Per token
a running logsumexp and the running top-``k`` keys (``topk_keys``) are kept; each
chunk's keys are merged with ``torch.topk`` over ``k + vocab_chunk`` candidates.

Cost: ``2 N H V`` matmul flops, plus a top-k over ``k + vocab_chunk`` int64 keys per
token and chunk; extra memory ``O(N k)`` beyond one chunk.
"""
from __future__ import annotations

import torch

from .chunked import chunk_tokens_for
from .stats import apply_softcap
from .topk_keys import MIN_KEY, pack_keys, top_keys, unpack_keys

DEFAULT_VOCAB_CHUNK = 1 << 15


def chunked_topk(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    k: int,
    temperature: float,
    softcap: float | None,
    chunk_size: int | None = None,
    vocab_chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` logprobs ``[N, k]`` fp32 and ids ``[N, k]`` int64 of
    ``softcap(hidden @ weight.T + bias) / temperature`` (hidden ``[N, H]``, weight ``[V, H]``)."""
    n, vocab = hidden.shape[0], weight.shape[0]
    dev = hidden.device
    v_step = max(1, min(vocab, vocab_chunk or DEFAULT_VOCAB_CHUNK))
    t_step = chunk_tokens_for(v_step, chunk_size)
    keys = torch.full((n, k), MIN_KEY, dtype=torch.int64, device=dev)
    lse = torch.full((n,), float("-inf"), dtype=torch.float32, device=dev)
    for v0 in range(0, vocab, v_step):
        v1 = min(vocab, v0 + v_step)
        w = weight[v0:v1].float()
        b = None if bias is None else bias[v0:v1].float()
        ids = torch.arange(v0, v1, device=dev)
        for t0 in range(0, n, t_step):
            t1 = min(n, t0 + t_step)
            logits = hidden[t0:t1].float() @ w.T
            if b is not None:
                logits += b
            z = apply_softcap(logits, softcap).div_(temperature)
            lse[t0:t1] = torch.logaddexp(lse[t0:t1], torch.logsumexp(z, dim=-1))
            keys[t0:t1] = top_keys(torch.cat([keys[t0:t1], pack_keys(z, ids)], dim=1), k)
    z, ids = unpack_keys(keys)
    return z - lse[:, None], ids
