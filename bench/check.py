"""Correctness of an implementation's output and gradients against fusedrl's, before any timing."""
from __future__ import annotations

import torch

# DESIGN.md: fp32 atol 1e-5 / rtol 1e-4; bf16 inputs atol 1e-2 / rtol 2e-2.
TOLERANCES = {"fp32": (1e-5, 1e-4), "bf16": (1e-2, 2e-2)}
CHUNK_ELEMENTS = 1 << 24


def tolerance_ratio(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> float:
    """``max |a - e| / (atol + rtol |e|)`` over all elements (<= 1 passes; NaN counts as inf).

    Computed in fp32 chunks of ``CHUNK_ELEMENTS`` so large gradients need no full-size temporaries.
    """
    a, e = actual.detach().reshape(-1), expected.detach().reshape(-1)
    worst = 0.0
    for start in range(0, a.numel(), CHUNK_ELEMENTS):
        ac, ec = a[start:start + CHUNK_ELEMENTS].float(), e[start:start + CHUNK_ELEMENTS].float()
        ratio = ((ac - ec).abs() / (atol + rtol * ec.abs())).nan_to_num(nan=float("inf")).max().item()
        worst = max(worst, ratio)
    return worst


def compare(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], dtype: str) -> tuple[str, float]:
    """``(status, worst tolerance ratio)`` of ``actual`` vs ``expected`` (same keys: out, grad_hidden, ...).

    status is ``ok`` or ``mismatch: <name> ...``.
    """
    atol, rtol = TOLERANCES[dtype]
    worst_name, worst = "", 0.0
    for name, ref in expected.items():
        got = actual.get(name)
        if got is None or got.shape != ref.shape:
            shape = "missing" if got is None else list(got.shape)
            return f"mismatch: {name} shape {shape} vs {list(ref.shape)}", float("inf")
        ratio = tolerance_ratio(got, ref, atol, rtol)
        if ratio > worst:
            worst_name, worst = name, ratio
    if worst <= 1.0:
        return "ok", worst
    return f"mismatch: {worst_name} tol_ratio={worst:.3g}", worst
