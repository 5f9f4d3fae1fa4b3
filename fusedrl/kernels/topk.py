"""``linear_topk``: per-token top-k logprobs over the full vocabulary, without ``[N, V]`` logits.

Backends: ``cuda`` (the kernel in ``csrc/``, k <= 256), ``triton`` (k <= 256),
``torch`` (chunked, any device and k) and ``eager`` (full logits; the reference).
Every backend ranks by the fp32 logit (after the optional softcap), larger first,
and breaks ties by the lower token id.
"""
from __future__ import annotations

import functools
import warnings

import torch

from . import cuda_ext
from .dispatch import resolve_backend, triton_available
from .topk_chunked import chunked_topk
from .topk_reference import eager_topk
from .validation import BACKENDS, check_linear_inputs, check_positive

TOPK_BACKENDS = BACKENDS + ("cuda",)
MAX_FUSED_K = 256  # kLinearTopkMaxK in csrc/linear_topk.h; the Triton tiles are sized for it too


def _check_backend(backend: str) -> None:
    if backend not in TOPK_BACKENDS:
        raise ValueError(f"backend: expected one of {TOPK_BACKENDS}, got {backend!r}")


def _check_k(k, vocab: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= vocab:
        raise ValueError(f"k: expected an integer in [1, V={vocab}], got {k!r}")


def _cuda_usable(device: torch.device, k: int) -> bool:
    if device.type != "cuda" or k > MAX_FUSED_K:
        return False
    error = cuda_ext.extension_error()
    if error is not None:
        warnings.warn(f"linear_topk: CUDA backend unavailable, falling back: {error}", stacklevel=3)
    return error is None


def _resolve(backend: str, device: torch.device, k: int) -> str:
    """``auto`` -> cuda, else triton (CUDA tensors, k <= 256), else torch; explicit names are checked."""
    if backend == "auto":
        if _cuda_usable(device, k):
            return "cuda"
        if device.type == "cuda" and triton_available() and k <= MAX_FUSED_K:
            return "triton"
        return "torch"
    if backend in ("cuda", "triton") and k > MAX_FUSED_K:
        raise ValueError(f"k: the {backend} backend supports k <= {MAX_FUSED_K}, got {k}; use backend='torch'")
    if backend == "cuda":
        if device.type != "cuda":
            raise ValueError(f"backend: 'cuda' needs CUDA tensors, got tensors on {device}")
        cuda_ext.load_extension()
        return backend
    return resolve_backend(backend, device)


def _cuda_topk(hidden, weight, bias, k, temperature, softcap):
    ext = cuda_ext.load_extension()
    bias32 = None if bias is None else bias.float().contiguous()
    with torch.cuda.device(hidden.device):
        stream = torch.cuda.current_stream(hidden.device).cuda_stream
        return ext.linear_topk(hidden, weight, bias32, k, 1.0 / temperature, softcap or 0.0, stream)


def _triton_topk(hidden, weight, bias, k, temperature, softcap):
    from .triton.topk_launch import triton_topk

    return triton_topk(hidden, weight, bias, k, temperature, softcap)


_FIXED_BACKENDS = {"cuda": _cuda_topk, "triton": _triton_topk, "eager": eager_topk}


@torch.no_grad()
def linear_topk(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    k: int,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    softcap: float | None = None,
    backend: str = "auto",
    chunk_size: int | None = None,
    vocab_chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` logprobs and ids of ``softmax(softcap(hidden @ weight.T + bias) / temperature)`` per token.

    Args:
        hidden: ``[..., H]`` hidden states (fp32, bf16 or fp16); weight: ``[V, H]``; bias: optional ``[V]``.
        k: ids per token, ``1 <= k <= V`` (the ``cuda`` and ``triton`` backends take ``k <= 256``).
        temperature: divides the logits (after the bias and the softcap) before the softmax.
        softcap: optional ``s`` for ``s * tanh(logits / s)`` (Gemma-2's final logit softcapping).
        backend: ``auto`` | ``cuda`` | ``triton`` | ``torch`` | ``eager``; ``auto`` prefers cuda, then
            triton for CUDA tensors, else torch.
        chunk_size / vocab_chunk: tokens / vocab rows per chunk of the ``torch`` backend.

    Returns:
        ``(logprobs [..., k] fp32, ids [..., k] int64)``, sorted by logprob descending, equal logits by
        lower id; logprobs are normalised over the full vocabulary. No gradient flows.
    """
    _check_backend(backend)
    check_linear_inputs(hidden, weight, bias)
    check_positive("temperature", temperature)
    if softcap is not None:
        check_positive("softcap", softcap)
    _check_k(k, weight.shape[0])
    name = _resolve(backend, hidden.device, k)
    common = torch.promote_types(hidden.dtype, weight.dtype)
    lead = tuple(hidden.shape[:-1])
    hidden2d = hidden.to(common).reshape(-1, hidden.shape[-1]).contiguous()
    weight = weight.to(common).contiguous()
    bias = None if bias is None else bias.contiguous()
    if hidden2d.shape[0] == 0:
        dev = hidden.device
        empty = torch.empty((*lead, k), device=dev)
        return empty, torch.empty((*lead, k), dtype=torch.int64, device=dev)
    if name == "torch":
        run = functools.partial(chunked_topk, chunk_size=chunk_size, vocab_chunk=vocab_chunk)
    else:
        run = _FIXED_BACKENDS[name]
    logprobs, ids = run(hidden2d, weight, bias, k, float(temperature), None if softcap is None else float(softcap))
    return logprobs.reshape(*lead, k), ids.reshape(*lead, k)
