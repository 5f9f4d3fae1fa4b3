"""Pieces every fused wrapper shares: input checks and frozen (no-grad) logprobs through the kernel."""
from __future__ import annotations

import torch

from ..logprobs import linear_logprobs
from .checks import check_tensor


def check_hidden_labels(hidden: torch.Tensor, labels: torch.Tensor, hidden_name: str = "hidden",
                        labels_name: str = "labels") -> None:
    """Raise unless ``hidden`` is ``[B, T, H]`` and ``labels`` is an integer ``[B, T]``."""
    check_tensor(hidden_name, hidden, dims=3)
    check_tensor(labels_name, labels, dims=2)
    if labels.shape != hidden.shape[:2]:
        raise ValueError(f"{labels_name}: expected shape {list(hidden.shape[:2])} ([B, T] of {hidden_name}), "
                         f"got {list(labels.shape)}")


def frozen_token_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None,
    temperature: float,
    softcap: float | None,
    ignore_index: int,
    backend: str,
) -> torch.Tensor:
    """``[B, T]`` fp32 logprobs of ``labels`` computed under ``torch.no_grad`` through the same kernel."""
    with torch.no_grad():
        return linear_logprobs(hidden, weight, labels, bias=bias, temperature=temperature, softcap=softcap,
                               ignore_index=ignore_index, backend=backend)


def reference_token_logps(
    ref_hidden: torch.Tensor,
    labels: torch.Tensor,
    *,
    ref_weight: torch.Tensor | None,
    ref_bias: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    temperature: float = 1.0,
    softcap: float | None = None,
    ignore_index: int = -100,
    backend: str = "auto",
    hidden_name: str = "ref_hidden",
) -> torch.Tensor:
    """Reference ``[B, T]`` logprobs from the reference model's hidden states, without grad.

    The reference head is ``ref_weight`` / ``ref_bias``, or the policy's ``weight`` / ``bias``
    when ``ref_weight`` is None (a shared, frozen lm_head).
    """
    check_hidden_labels(ref_hidden, labels, hidden_name=hidden_name)
    if ref_weight is None:
        if ref_bias is not None:
            raise ValueError("ref_bias: given without ref_weight; give both, or neither to reuse the policy head")
        ref_weight, ref_bias = weight, bias
    return frozen_token_logps(ref_hidden, ref_weight, labels, bias=ref_bias, temperature=temperature,
                              softcap=softcap, ignore_index=ignore_index, backend=backend)
