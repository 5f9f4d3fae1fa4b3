"""Block sizes and ``tl.dot`` precision of the Triton kernels, for the GPU and for the CPU interpreter."""
from __future__ import annotations

import os
from typing import NamedTuple

import torch

from ..stats import LinearVocabProblem


class TileConfig(NamedTuple):
    """Block sizes and launch options of one vocab-tile kernel call."""

    block_n: int
    block_v: int
    block_h: int
    num_warps: int
    num_stages: int


class MatmulConfig(NamedTuple):
    """Block sizes and launch options of ``matmul_acc``."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int


def interpreter_active() -> bool:
    """True under ``TRITON_INTERPRET=1`` (kernels run on CPU tensors through the interpreter)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def tile_config(dtype: torch.dtype, interpreting: bool | None = None) -> TileConfig:
    """Tiles for ``dtype``: tensor-core friendly on GPU, tiny under the CPU interpreter (default: from the env)."""
    if interpreter_active() if interpreting is None else interpreting:
        return TileConfig(16, 32, 16, 1, 1)
    if dtype == torch.float32:
        return TileConfig(64, 64, 32, 4, 2)
    return TileConfig(128, 128, 64, 8, 3)


def matmul_config(dtype: torch.dtype, interpreting: bool | None = None) -> MatmulConfig:
    """``matmul_acc`` tiles for ``dtype`` (tiny under the interpreter)."""
    if interpreter_active() if interpreting is None else interpreting:
        return MatmulConfig(16, 32, 16, 2, 1, 1)
    if dtype == torch.float32:
        return MatmulConfig(64, 64, 32, 8, 4, 2)
    return MatmulConfig(128, 256, 64, 8, 8, 3)


def dot_precision(dtype: torch.dtype, interpreting: bool | None = None) -> str:
    """``tl.dot`` precision: exact fp32 for fp32 inputs; fp32 copies under the interpreter (see ``tile_dot``)."""
    if interpreter_active() if interpreting is None else interpreting:
        return "upcast"
    return "ieee" if dtype == torch.float32 else "tf32"


def scalar_args(problem: LinearVocabProblem) -> tuple[float, float]:
    """Kernel scalars ``(1 / temperature, softcap)``; softcap is 1.0 (unused) when the problem has none."""
    softcap = 1.0 if problem.softcap is None else float(problem.softcap)
    return 1.0 / problem.temperature, softcap
