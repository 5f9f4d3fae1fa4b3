"""The roofline: a plain ``torch.matmul`` of the same ``[N, H] x [H, V]`` shape, timed like the kernels.

Forward ``hidden @ weight.T`` (2·N·H·V flops); backward the two gradient matmuls (4·N·H·V) with a
random upstream gradient ``grad_out [N, V]``.
"""
from __future__ import annotations

import torch

from .. import synthetic
from ..spec import Case, ImplSpec, OpSpec

NAME = "torch.matmul"


def make_inputs(case: Case, device: torch.device) -> dict[str, torch.Tensor]:
    """hidden ``[N, H]`` and weight ``[V, H]`` (grad leaves), grad_out ``[N, V]`` in the case dtype."""
    gen = synthetic.generator(device)
    return {
        "hidden": synthetic.hidden_states((case.n, case.h), case.torch_dtype, device, gen),
        "weight": synthetic.lm_head(case.v, case.h, case.torch_dtype, device, gen),
        "grad_out": torch.randn((case.n, case.v), generator=gen, device=device).to(case.torch_dtype),
    }


def _matmul(x) -> torch.Tensor:
    return x["hidden"] @ x["weight"].T


OP = OpSpec(
    name="matmul",
    title="torch.matmul roofline",
    make_inputs=make_inputs,
    impls=(ImplSpec(NAME, lambda options: _matmul),),
    fwd_flops=2.0,
    bwd_flops=4.0,
)
