"""Builders shared by every op's implementation table: fusedrl, eager and torch.compile of the eager code."""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from ..spec import BuildOptions, Impl, ImplSpec


def compiled(fn: Impl) -> Callable[[BuildOptions], Impl]:
    """A builder of ``torch.compile(fn)`` with static shapes (the runner resets dynamo before each build)."""
    return lambda options: torch.compile(fn, dynamic=False)


def standard_impls(
    fusedrl: Callable[..., torch.Tensor],
    eager: Impl,
    *competitors: ImplSpec,
) -> tuple[ImplSpec, ...]:
    """The row of the table for one op: ``fusedrl``, ``eager``, ``torch.compile`` (of ``eager``), then competitors.

    ``fusedrl(inputs, backend=...)`` takes the fusedrl backend name; ``eager(inputs)`` is plain torch.
    """

    def build_fusedrl(options: BuildOptions) -> Impl:
        return functools.partial(fusedrl, backend=options.fusedrl_backend)

    return (
        ImplSpec("fusedrl", build_fusedrl),
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

