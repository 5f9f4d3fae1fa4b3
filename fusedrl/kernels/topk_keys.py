"""Sortable int64 keys that order (logit, token id) pairs the way ``linear_topk`` ranks them.

A key packs an fp32 logit and a token id so that plain integer order is the
ranking "larger logit first, lower id first among equal logits":

    key = ordered(z) << 32 | (2**32 - 1 - id)

``ordered`` maps the float's bits to an int32 that grows with ``z`` (-0.0 is
first folded into +0.0 so both compare equal). Keys are unique per id, so any
top-k over keys (``torch.topk``, a bitonic sort) is exact and free of tie
ambiguity. The Triton kernel builds the same keys (``triton/topk_fwd.py``).
"""
from __future__ import annotations

import torch

MIN_KEY = torch.iinfo(torch.int64).min
_LOW = 0xFFFFFFFF
_MAG = 0x7FFFFFFF


def pack_keys(z: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Keys of fp32 logits ``z[..., C]`` at token ids ``ids`` (broadcast to ``z``); int64, same shape as ``z``."""
    bits = z.float().contiguous().view(torch.int32)
    bits = torch.where((bits & _MAG) == 0, 0, bits)
    ordered = torch.where(bits >= 0, bits, bits ^ _MAG)
    return (ordered.to(torch.int64) << 32) | (_LOW - ids.to(torch.int64))


def unpack_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of ``pack_keys``: fp32 logits and int64 ids of ``keys[...]``."""
    ids = _LOW - (keys & _LOW)
    ordered = (keys >> 32).to(torch.int32)
    bits = torch.where(ordered >= 0, ordered, ordered ^ _MAG)
    return bits.view(torch.float32), ids


def top_keys(keys: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` largest keys along the last dim of ``keys[..., C]`` (``C >= k``), sorted descending."""
    return torch.topk(keys, k, dim=-1, sorted=True).values
