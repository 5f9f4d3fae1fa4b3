"""Fused DPO loss (sigmoid, beta 0.1): policy chosen + rejected with grad, the reference under no_grad.

hidden and ref_hidden ``[2B, T, H]`` (B chosen rows, then B rejected rows), weight ``[V, H]`` (shared
by the frozen reference), labels ``[2B, T]``. Flops: policy forward + reference forward + policy backward.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from fusedrl.kernels.losses import completion_mask, dpo_loss, fused_linear_dpo_loss, sequence_logps

from .. import eager, synthetic
from ..competitors import cce_token_logps, loss_tensor, supported_kwargs
from ..spec import BuildOptions, Case, Impl, ImplSpec, OpSpec
from .impls import liger_compiled, standard_impls

BETA = 0.1


def make_inputs(case: Case, device: torch.device) -> dict[str, torch.Tensor]:
    """hidden ``[2B, T, H]`` and weight ``[V, H]`` (grad leaves), labels ``[2B, T]``, ref_hidden ``[2B, T, H]``."""
    rows, seq = case.layout(pairs=True)
    gen = synthetic.generator(device)
    return {
        **synthetic.policy_rows(rows, seq, case.h, case.v, case.torch_dtype, device, gen, case.prompt_fraction),
        "ref_hidden": synthetic.hidden_states((rows, seq, case.h), case.torch_dtype, device, gen, requires_grad=False),
    }


def dpo_from_token_logps(token_logps: Callable[..., torch.Tensor]) -> Impl:
    """DPO composed from a ``token_logps(hidden, weight, ids) -> [2B, T]`` function and fusedrl's ``dpo_loss``."""

    def run(x) -> torch.Tensor:
        mask = completion_mask(x["labels"])
        policy = sequence_logps(token_logps(x["hidden"], x["weight"], x["labels"]), mask)
        with torch.no_grad():
            ref = sequence_logps(token_logps(x["ref_hidden"], x["weight"], x["labels"]), mask)
        chosen, rejected = policy.chunk(2)
        ref_chosen, ref_rejected = ref.chunk(2)
        return dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=BETA)[0].mean()

    return run


def _fusedrl(x, backend: str) -> torch.Tensor:
    return fused_linear_dpo_loss(x["hidden"], x["weight"], x["labels"], ref_hidden=x["ref_hidden"], beta=BETA,
                                 rpo_alpha=0.0, backend=backend)[0]


def _liger(options: BuildOptions) -> Impl:
    from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

    loss = LigerFusedLinearDPOLoss(**supported_kwargs(
        LigerFusedLinearDPOLoss, ignore_index=eager.IGNORE_INDEX, beta=BETA, compute_nll_loss=False,
        compiled=liger_compiled(options), use_ref_model=True, average_log_prob=False, loss_type="sigmoid"))
    return lambda x: loss_tensor(loss(x["weight"], x["hidden"], x["labels"], ref_input=x["ref_hidden"],
                                      ref_weight=x["weight"].detach()))


OP = OpSpec(
    name="dpo",
    title="fused DPO loss (chosen + rejected + reference)",
    make_inputs=make_inputs,
    impls=standard_impls(
        _fusedrl,
        dpo_from_token_logps(eager.token_logps),
        ImplSpec("liger", _liger, library="liger"),
        ImplSpec("cce", lambda options: dpo_from_token_logps(cce_token_logps), library="cce", cuda_only=True),
    ),
    fwd_flops=4.0,
    pairs=True,
)
