"""Argument checks shared by the public kernel entry points.

Every check raises ``ValueError`` naming the argument and what was expected, so
bad input never surfaces as an error from deep inside torch or Triton.
"""
from __future__ import annotations

import torch

BACKENDS = ("auto", "triton", "torch", "eager")


def check_backend(backend: str) -> None:
    """Raise unless ``backend`` is one of ``BACKENDS``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")


def check_positive(name: str, value: float) -> None:
    """Raise unless ``value`` is a finite number > 0."""
    if not isinstance(value, (int, float)) or not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")


def check_linear_inputs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Check hidden ``[..., H]``, weight ``[V, H]`` and bias ``[V]`` agree in shape, dtype and device."""
    if not isinstance(hidden, torch.Tensor) or hidden.dim() < 1:
        raise ValueError("hidden: expected a tensor of shape [..., H]")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"weight: expected a 2-D tensor [V, H], got {got}")
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight: expected shape [V, {hidden.shape[-1]}] to match hidden's last dim H={hidden.shape[-1]}, "
            f"got {tuple(weight.shape)}"
        )
    if weight.shape[0] == 0:
        raise ValueError("weight: expected a vocabulary of at least one row, got V=0")
    for name, t in (("hidden", hidden), ("weight", weight)):
        if not t.is_floating_point():
            raise ValueError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    if weight.device != hidden.device:
        raise ValueError(f"weight: expected device {hidden.device} like hidden, got {weight.device}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (weight.shape[0],):
            got = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
            raise ValueError(f"bias: expected shape [V]=[{weight.shape[0]}], got {got}")
        if bias.device != hidden.device:
            raise ValueError(f"bias: expected device {hidden.device} like hidden, got {bias.device}")


def normalize_ids(hidden: torch.Tensor, ids: torch.Tensor, vocab: int, ignore_index: int, name: str = "ids") -> torch.Tensor:
    """Return ids as a ``[N, K]`` int64 tensor whose leading dims match ``hidden[..., H]``.

    ``ids`` may be ``[...]`` (one id per token) or ``[..., K]``. Every id must lie in
    ``[0, vocab)`` or equal ``ignore_index``.
    """
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.dtype == torch.bool:
        got = ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError(f"{name}: expected an integer tensor, got {got}")
    lead = tuple(hidden.shape[:-1])
    if tuple(ids.shape) == lead:
        ids2d = ids.reshape(-1, 1)
    elif ids.dim() == len(lead) + 1 and tuple(ids.shape[:-1]) == lead:
        if ids.shape[-1] == 0:
            raise ValueError(f"{name}: expected K >= 1 ids per token, got K=0")
        ids2d = ids.reshape(-1, ids.shape[-1])
    else:
        raise ValueError(
            f"{name}: expected shape {list(lead)} or {list(lead) + ['K']} to match hidden {list(hidden.shape)}, "
            f"got {list(ids.shape)}"
        )
    if ids.device != hidden.device:
        raise ValueError(f"{name}: expected device {hidden.device} like hidden, got {ids.device}")
    ids2d = ids2d.to(torch.int64)
    bad = ((ids2d < 0) | (ids2d >= vocab)) & (ids2d != ignore_index)
    if ids2d.numel() and bool(bad.any()):
        first = ids2d[bad][0].item()
        raise ValueError(
            f"{name}: expected values in [0, {vocab}) or ignore_index={ignore_index}, found {first} "
            f"({int(bad.sum())} out-of-range entries)"
        )
    return ids2d
