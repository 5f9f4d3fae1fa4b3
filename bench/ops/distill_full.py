"""Full-vocabulary distillation from a live teacher: generalized JSD (beta 0.5, GKD's default) of the student
from the teacher over every vocabulary id, from both models' hidden states and lm_heads.

hidden ``[B, T, H]`` and weight ``[V, H]`` (the student, grad leaves), teacher_hidden ``[B, T, H]`` and
teacher_weight ``[V, H]`` (frozen), labels ``[B, T]`` (ignored positions left out). Flops: both heads forward,
then the student's backward with the teacher's logits recomputed.
"""
from __future__ import annotations

import torch

from fusedrl.kernels import linear_distill_divergence

from .. import eager, synthetic
from ..competitors import loss_tensor
from ..spec import BuildOptions, Case, Impl, ImplSpec, OpSpec
from .impls import standard_impls, unsupported

BETA = 0.5


def make_inputs(case: Case, device: torch.device) -> dict[str, torch.Tensor]:
    """The student's hidden and weight (grad leaves), the teacher's (frozen), labels ``[B, T]``."""
    rows, seq = case.layout()
    gen = synthetic.generator(device)
    return {
        **synthetic.policy_rows(rows, seq, case.h, case.v, case.torch_dtype, device, gen, case.prompt_fraction),
        "teacher_hidden": synthetic.hidden_states((rows, seq, case.h), case.torch_dtype, device, gen,
                                                  requires_grad=False),
        "teacher_weight": synthetic.lm_head(case.v, case.h, case.torch_dtype, device, gen, requires_grad=False),
    }


def _fusedrl(x, backend: str) -> torch.Tensor:
    return linear_distill_divergence(x["hidden"], x["weight"], x["teacher_hidden"], x["teacher_weight"], x["labels"],
                                     divergence="jsd", beta=BETA, backend=backend)


def _eager(x) -> torch.Tensor:
    keep = x["labels"] != eager.IGNORE_INDEX
    log_q = torch.log_softmax(eager.logits(x["hidden"][keep], x["weight"]), dim=-1)
    with torch.no_grad():
        log_p = torch.log_softmax(eager.logits(x["teacher_hidden"][keep], x["teacher_weight"]), dim=-1)
    log_m = torch.logaddexp(log_p + torch.log(torch.tensor(BETA)), log_q + torch.log(torch.tensor(1.0 - BETA)))
    jsd = BETA * (log_p.exp() * (log_p - log_m)).sum(-1) + (1.0 - BETA) * (log_q.exp() * (log_q - log_m)).sum(-1)
    return jsd.mean()


def _liger(options: BuildOptions) -> Impl:
    from liger_kernel.transformers.fused_linear_jsd import LigerFusedLinearJSD

    loss = LigerFusedLinearJSD(jsd_beta=BETA, ignore_index=eager.IGNORE_INDEX)

    def run(x) -> torch.Tensor:
        h = x["hidden"].shape[-1]
        return loss_tensor(loss(x["hidden"].reshape(-1, h), x["weight"], x["teacher_hidden"].reshape(-1, h),
                                x["teacher_weight"], x["labels"].reshape(-1)))

    return run


OP = OpSpec(
    name="kd-full",
    title=f"full-vocabulary KD from a live teacher (JSD, beta {BETA})",
    make_inputs=make_inputs,
    impls=standard_impls(
        _fusedrl,
        _eager,
        ImplSpec("liger", _liger, library="liger", cuda_only=True),
        unsupported("cce", "one label per token; no teacher distribution"),
        strategies=("split",),
    ),
    fwd_flops=4.0,
    bwd_flops=8.0,
)
