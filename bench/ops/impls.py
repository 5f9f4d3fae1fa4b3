"""Builders shared by every op's implementation table: fusedrl and its fixed-backend variants, eager and
torch.compile of the eager code."""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from fusedrl.kernels.triton.backward_launch import BACKWARD_ENV, BACKWARD_STRATEGIES  # read when the backward runs

from ..spec import BuildOptions, Impl, ImplSpec


def compiled(fn: Impl) -> Callable[[BuildOptions], Impl]:
    """A builder of ``torch.compile(fn)`` with static shapes (the runner resets dynamo before each build)."""
    return lambda options: torch.compile(fn, dynamic=False)


def _fusedrl_variants(fusedrl: Callable[..., torch.Tensor], differentiable: bool = True,
                      strategies: tuple[str, ...] = BACKWARD_STRATEGIES) -> tuple[ImplSpec, ...]:
    """fusedrl on a fixed backend: ``fusedrl-<strategy>`` (Triton with ``BACKWARD_ENV=<strategy>``) and
    ``fusedrl-torch`` (the chunked torch path). A no-grad op reports the strategies as unavailable, and an op
    whose backward has fewer ``strategies`` the others."""

    def on(backend: str) -> Callable[[BuildOptions], Impl]:
        return lambda options: functools.partial(fusedrl, backend=backend)

    def variant(name: str) -> ImplSpec:
        if not differentiable:
            return ImplSpec(f"fusedrl-{name}", None, unsupported="no backward to choose a strategy for (no-grad op)")
        if name not in strategies:
            return ImplSpec(f"fusedrl-{name}", None, unsupported=f"this op's backward has {', '.join(strategies)} only")
        return ImplSpec(f"fusedrl-{name}", on("triton"), cuda_only=True, env=((BACKWARD_ENV, name),))

    return (*(variant(name) for name in BACKWARD_STRATEGIES), ImplSpec("fusedrl-torch", on("torch")))


def standard_impls(
    fusedrl: Callable[..., torch.Tensor],
    eager: Impl,
    *competitors: ImplSpec,
    differentiable: bool = True,
    strategies: tuple[str, ...] = BACKWARD_STRATEGIES,
) -> tuple[ImplSpec, ...]:
    """The row of the table for one op: ``fusedrl``, its fixed-backend variants (the Triton backward
    ``strategies`` it has), ``eager``, ``torch.compile`` (of ``eager``), then competitors.

    ``fusedrl(inputs, backend=...)`` takes the fusedrl backend name; ``eager(inputs)`` is plain torch.
    """

    def build_fusedrl(options: BuildOptions) -> Impl:
        return functools.partial(fusedrl, backend=options.fusedrl_backend)

    return (
        ImplSpec("fusedrl", build_fusedrl),
        *_fusedrl_variants(fusedrl, differentiable, strategies),
        ImplSpec("eager", lambda options: eager),
        ImplSpec("torch.compile", compiled(eager), needs_compile=True),
        *competitors,
    )


def unsupported(library: str, reason: str) -> ImplSpec:
    """A competitor entry for a library that has no such op."""
    return ImplSpec(library, None, library=library, unsupported=reason)


def liger_compiled(options: BuildOptions) -> bool:
    """Liger's ``compiled`` flag: its default (True) on CUDA; on CPU only when torch.compile is enabled."""
    return options.compile or options.device.type == "cuda"

