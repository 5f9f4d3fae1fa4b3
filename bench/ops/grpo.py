"""Fused GRPO loss (loss_type grpo, beta 0.04 with a k3 KL to the reference, on-policy ratios).

hidden and ref_hidden ``[B, T, H]``, weight ``[V, H]`` (shared by the frozen reference), labels ``[B, T]``,
advantages ``[B]``, temperature 1. Flops: policy forward + reference forward + policy backward.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from fusedrl.kernels.losses import completion_mask, fused_linear_grpo_loss, grpo_loss

from .. import eager, synthetic
from ..competitors import cce_token_logps, loss_tensor, supported_kwargs
from ..spec import BuildOptions, Case, Impl, ImplSpec, OpSpec
from .impls import liger_compiled, standard_impls

BETA = 0.04
EPSILON = 0.2


def make_inputs(case: Case, device: torch.device) -> dict[str, torch.Tensor]:
    """hidden ``[B, T, H]`` and weight (grad leaves), labels ``[B, T]``, advantages ``[B]``, ref_hidden."""
    rows, seq = case.layout()
    gen = synthetic.generator(device)
    return {
        **synthetic.policy_rows(rows, seq, case.h, case.v, case.torch_dtype, device, gen, case.prompt_fraction),
        "advantages": synthetic.standard_normal((rows,), device, gen),
        "ref_hidden": synthetic.hidden_states((rows, seq, case.h), case.torch_dtype, device, gen, requires_grad=False),
    }


def grpo_from_token_logps(token_logps: Callable[..., torch.Tensor]) -> Impl:
    """GRPO composed from a ``token_logps(hidden, weight, ids) -> [B, T]`` function and fusedrl's ``grpo_loss``."""

    def run(x) -> torch.Tensor:
        mask = completion_mask(x["labels"])
        logps = token_logps(x["hidden"], x["weight"], x["labels"])
        with torch.no_grad():
            ref = token_logps(x["ref_hidden"], x["weight"], x["labels"])
        return grpo_loss(logps, None, x["advantages"], mask, ref_logps=ref, beta=BETA, epsilon=EPSILON,
                         loss_type="grpo")[0]

    return run


def _fusedrl(x, backend: str) -> torch.Tensor:
    return fused_linear_grpo_loss(x["hidden"], x["weight"], x["labels"], x["advantages"], ref_hidden=x["ref_hidden"],
                                  beta=BETA, epsilon=EPSILON, loss_type="grpo", temperature=1.0, backend=backend)[0]


def _liger(options: BuildOptions) -> Impl:
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    loss = LigerFusedLinearGRPOLoss(**supported_kwargs(
        LigerFusedLinearGRPOLoss, beta=BETA, compiled=liger_compiled(options), use_ref_model=True,
        epsilon_low=EPSILON, epsilon_high=EPSILON, loss_type="grpo", temperature=1.0))

    def run(x) -> torch.Tensor:
        labels = x["labels"]
        mask = completion_mask(labels).float()
        return loss_tensor(loss(x["hidden"], x["weight"], labels.clamp(min=0), mask, x["advantages"],
                                ref_input=x["ref_hidden"], ref_weight=x["weight"].detach()))

    return run


OP = OpSpec(
    name="grpo",
    title="fused GRPO loss (policy + reference)",
    make_inputs=make_inputs,
    impls=standard_impls(
        _fusedrl,
        grpo_from_token_logps(eager.token_logps),
        ImplSpec("liger", _liger, library="liger"),
        ImplSpec("cce", lambda options: grpo_from_token_logps(cce_token_logps), library="cce", cuda_only=True),
    ),
    fwd_flops=4.0,
)
