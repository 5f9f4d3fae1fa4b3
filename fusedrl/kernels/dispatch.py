"""Backend selection and the single entry point to the per-token vocab statistics."""
from __future__ import annotations

import functools
import os

import torch

from . import chunked
from .autograd import fused_vocab_stats
from .reference import eager_vocab_stats
from .stats import LinearVocabProblem, VocabStats
from .validation import check_backend, check_linear_inputs, check_positive, normalize_ids


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when Triton imports (kernels then run on CUDA, or on CPU under TRITON_INTERPRET=1)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_usable_on(device: torch.device) -> bool:
    """True when the Triton kernels can run on tensors of ``device``."""
    if not triton_available():
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``auto`` to ``triton`` for CUDA tensors when Triton imports, else ``torch``; check explicit names."""
    check_backend(backend)
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "triton" and not triton_usable_on(device):
        raise ValueError(
            f"backend: 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 on CPU) and an importable triton; "
            f"got tensors on {device}"
        )
    return backend


def _backend_module(name: str):
    if name == "triton":
        from .triton import launch

        return launch
    return chunked


def prepare_problem(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    ids: torch.Tensor,
    *,
    bias: torch.Tensor | None,
    temperature: float,
    softcap: float | None,
    ignore_index: int,
    ids_name: str = "ids",
) -> tuple[LinearVocabProblem, tuple[int, ...]]:
    """Validate and flatten inputs; return the problem and the leading shape of hidden."""
    check_linear_inputs(hidden, weight, bias)
    check_positive("temperature", temperature)
    if softcap is not None:
        check_positive("softcap", softcap)
    ids2d = normalize_ids(hidden, ids, weight.shape[0], ignore_index, ids_name)
    ids2d = torch.where(ids2d == ignore_index, -1, ids2d).contiguous()
    common = torch.promote_types(hidden.dtype, weight.dtype)
    hidden, weight = hidden.to(common), weight.to(common)
    lead = tuple(hidden.shape[:-1])
    hidden2d = hidden.reshape(-1, hidden.shape[-1]).contiguous()
    problem = LinearVocabProblem(
        hidden2d, weight.contiguous(), None if bias is None else bias.contiguous(), ids2d, float(temperature), softcap
    )
    return problem, lead


def vocab_stats(problem: LinearVocabProblem, backend: str, chunk_size: int | None = None) -> VocabStats:
    """Per-token ``VocabStats`` ``[N]`` of a prepared problem through the named backend (see ``resolve_backend``).

    A token whose ids are all ignored gets 0 for every statistic, and the fused backends never compute its
    logits: prompt and padding tokens cost no lm_head work, forward or backward (the kernels read the kept
    tokens' hidden rows in place; only ``[tokens]``-sized tensors are gathered and scattered)."""
    name = resolve_backend(backend, problem.hidden.device)
    if name == "eager":
        return eager_vocab_stats(problem.hidden, problem.weight, problem.bias, problem.ids, problem.temperature,
                                 problem.softcap)
    backend_module = _backend_module(name)
    rows = (problem.ids >= 0).any(dim=1).nonzero().squeeze(1)
    n = problem.ids.shape[0]
    if rows.numel() == n:
        return fused_vocab_stats(problem, backend_module, chunk_size)
    kept = problem._replace(ids=problem.ids.index_select(0, rows), token_rows=rows)
    stats = fused_vocab_stats(kept, backend_module, chunk_size)
    return VocabStats(*(stat.new_zeros((n, *stat.shape[1:])).index_copy(0, rows, stat) for stat in stats))
