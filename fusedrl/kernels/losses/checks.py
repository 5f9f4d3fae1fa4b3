"""Argument checks shared by the losses: each raises ``ValueError`` naming the argument."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")


def check_range(
    name: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise unless ``value`` is a finite number within ``[low, high]`` (``(``/``)`` where open; None = unbounded)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise ValueError(f"{name}: expected a finite number in {interval}, got {value!r}")


def check_tensor(name: str, value: torch.Tensor, dims: int | None = None) -> None:
    """Raise unless ``value`` is a tensor (with ``dims`` dimensions when given)."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor, got {type(value).__name__}")
    if dims is not None and value.dim() != dims:
        raise ValueError(f"{name}: expected a {dims}-D tensor, got shape {list(value.shape)}")


def check_same_shape(reference_name: str, reference: torch.Tensor, **others: torch.Tensor | None) -> None:
    """Raise unless every tensor in ``others`` (None entries skipped) has the shape of ``reference``."""
    check_tensor(reference_name, reference)
    for name, value in others.items():
        if value is None:
            continue
        check_tensor(name, value)
        if value.shape != reference.shape:
            raise ValueError(
                f"{name}: expected shape {list(reference.shape)} like {reference_name}, got {list(value.shape)}"
            )


def check_pair(first_name: str, first: torch.Tensor, **others: torch.Tensor | None) -> None:
    """Raise unless ``first`` is ``[B]`` and every other given tensor is ``[B]`` too."""
    check_tensor(first_name, first, dims=1)
    check_same_shape(first_name, first, **others)


def check_lengths(name: str, lengths: torch.Tensor) -> None:
    """Raise unless every entry of ``lengths`` (completion tokens per sequence) is > 0."""
    check_tensor(name, lengths)
    empty = (lengths <= 0).nonzero().flatten()
    if empty.numel():
        raise ValueError(
            f"{name}: expected every sequence to have at least one completion token, "
            f"got lengths <= 0 at rows {empty.tolist()}"
        )


def check_tokens(mask: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    """Raise unless ``mask`` is a bool ``[B, T]`` tensor and every given tensor is ``[B, T]`` too."""
    check_tensor("mask", mask, dims=2)
    if mask.dtype != torch.bool:
        raise ValueError(f"mask: expected a bool tensor (True on completion tokens), got {mask.dtype}")
    check_same_shape("mask", mask, **tensors)


def check_batch(name: str, value: torch.Tensor, batch_size: int, like: str) -> None:
    """Raise unless ``value`` is a ``[B]`` tensor with ``B = batch_size`` (the batch size of ``like``)."""
    check_tensor(name, value, dims=1)
    if value.shape[0] != batch_size:
        raise ValueError(f"{name}: expected batch size {batch_size} like {like}, got {value.shape[0]}")
