"""The vocabulary of the suite: a workload (``Case``), an implementation (``ImplSpec``) and an op (``OpSpec``)."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}

Inputs = Mapping[str, torch.Tensor]
Impl = Callable[[Inputs], torch.Tensor]


@dataclass(frozen=True)
class Case:
    """One workload: ``n`` tokens of hidden size ``h`` against a vocabulary of ``v``, in ``dtype``.

    Tokens are laid out as rows of ``seq`` tokens (shorter when ``n`` is small); ops on
    pairs (DPO) need an even number of rows. The first ``prompt_fraction`` of each row's labels are
    ignored (its prompt): they count in ``n`` (and in the nominal flops), but need no logits.
    """

    n: int
    h: int
    v: int
    dtype: str
    seq: int = 1024
    prompt_fraction: float = 0.25

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype of hidden states and weight."""
        return DTYPES[self.dtype]

    def layout(self, pairs: bool = False) -> tuple[int, int]:
        """``(rows, seq)`` tiling the ``n`` tokens exactly; ``pairs`` asks for an even number of rows >= 2."""
        min_rows = 2 if pairs else 1
        seq = min(self.seq, self.n // min_rows)
        rows = self.n // seq if seq else 0
        if seq < 1 or rows * seq != self.n or rows < min_rows or (pairs and rows % 2):
            need = "an even number of" if pairs else "whole"
            raise ValueError(f"n={self.n}: cannot tile into {need} rows of seq={self.seq} tokens")
        return rows, seq


@dataclass(frozen=True)
class BuildOptions:
    """What an implementation may need to know when it is built for a case."""

    device: torch.device
    fusedrl_backend: str = "auto"
    compile: bool = False


@dataclass(frozen=True)
class ImplSpec:
    """One implementation of an op.

    ``build(options)`` returns the callable ``inputs -> output`` for one case (called once per case,
    so it may hold modules or compiled graphs); None when the library has no such op, with the
    reason in ``unsupported``. ``library`` names the optional package it needs (see
    ``bench.competitors``), ``cuda_only`` marks kernels that only run on CUDA tensors,
    ``needs_compile`` the torch.compile variant, and ``env`` holds ``(name, value)`` environment
    variables in force while the implementation runs (see ``scoped_env``).
    """

    name: str
    build: Callable[[BuildOptions], Impl] | None
    library: str | None = None
    unsupported: str = ""
    cuda_only: bool = False
    needs_compile: bool = False
    env: tuple[tuple[str, str], ...] = ()

    @contextlib.contextmanager
    def scoped_env(self) -> Iterator[None]:
        """Set ``env`` for the duration of the block (build, calls and their backward), then restore it."""
        saved = {name: os.environ.get(name) for name, _ in self.env}
        os.environ.update(dict(self.env))
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


@dataclass(frozen=True)
class OpSpec:
    """One op family of the suite.

    ``make_inputs(case, device)`` returns the inputs; ``hidden`` and ``weight`` are the grad leaves of
    differentiable ops, and ``grad_out`` (when present) is the upstream gradient of a non-scalar output.
    ``fwd_flops`` / ``bwd_flops`` are multiples of ``N * H * V`` (N = policy tokens).
    ``unavailable()`` returns a reason when the op itself cannot run (None otherwise).
    """

    name: str
    title: str
    make_inputs: Callable[[Case, torch.device], dict[str, torch.Tensor]]
    impls: tuple[ImplSpec, ...]
    fwd_flops: float = 2.0
    bwd_flops: float = 6.0
    pairs: bool = False
    unavailable: Callable[[], str | None] = lambda: None

    @property
    def differentiable(self) -> bool:
        """True when the op has a backward to time."""
        return self.bwd_flops > 0
