"""Teacher top-k extraction (no grad): the K=64 largest logprobs per token over the full vocabulary.

hidden ``[N, H]``, weight ``[V, H]`` -> logprobs ``[N, K]`` (descending). Runs only when
``fusedrl.kernels.linear_topk`` exists.
"""
from __future__ import annotations

import torch

from .. import eager, synthetic
from ..spec import Case, OpSpec
from .distill import TOP_K
from .impls import standard_impls, unsupported


def unavailable() -> str | None:
    """Why the op cannot run: ``linear_topk`` is not (yet) exported by fusedrl.kernels."""
    try:
        from fusedrl.kernels import linear_topk  # noqa: F401
    except ImportError as err:
        return f"fusedrl.kernels.linear_topk not available ({err})"
    return None


def make_inputs(case: Case, device: torch.device) -> dict[str, torch.Tensor]:
    """hidden ``[N, H]`` and weight ``[V, H]``, no grad."""
    gen = synthetic.generator(device)
    return {
        "hidden": synthetic.hidden_states((case.n, case.h), case.torch_dtype, device, gen, requires_grad=False),
        "weight": synthetic.lm_head(case.v, case.h, case.torch_dtype, device, gen, requires_grad=False),
    }


def _fusedrl(x, backend: str) -> torch.Tensor:
    from fusedrl.kernels import linear_topk

    return linear_topk(x["hidden"], x["weight"], TOP_K, backend=backend)[0]


def _eager(x) -> torch.Tensor:
    return eager.topk_logprobs(x["hidden"], x["weight"], TOP_K)


OP = OpSpec(
    name="topk",
    title=f"teacher top-k extraction (K={TOP_K}, no grad)",
    make_inputs=make_inputs,
    impls=standard_impls(
        _fusedrl,
        _eager,
        unsupported("liger", "no top-k extraction op"),
        unsupported("cce", "no top-k extraction op"),
        differentiable=False,
    ),
    bwd_flops=0.0,
    unavailable=unavailable,
)
