"""Top-k knowledge distillation (forward KL over the teacher's K=64 ids) from the student's hidden states.

hidden ``[B, T, H]``, weight ``[V, H]``, labels ``[B, T]``, target_ids and target_logprobs ``[B, T, K]``.
"""
from __future__ import annotations

import torch

from fusedrl.kernels.losses import completion_mask, fused_linear_topk_kd_loss, topk_kd_loss

from .. import eager, synthetic
from ..spec import Case, OpSpec
from .impls import standard_impls, unsupported

TOP_K = 64
TEACHER_SCALE = 2.0


def make_inputs(case: Case, device: torch.device) -> dict[str, torch.Tensor]:
    """hidden ``[B, T, H]`` and weight (grad leaves), labels ``[B, T]``, teacher top-k ids and logprobs."""
    rows, seq = case.layout()
    gen = synthetic.generator(device)
    scores = synthetic.standard_normal((rows, seq, TOP_K), device, gen) * TEACHER_SCALE
    return {
        **synthetic.policy_rows(rows, seq, case.h, case.v, case.torch_dtype, device, gen, case.prompt_fraction),
        "target_ids": torch.randint(0, case.v, (rows, seq, TOP_K), generator=gen, device=device),
        "target_logprobs": torch.log_softmax(scores, dim=-1).sort(dim=-1, descending=True).values,
    }


def _fusedrl(x, backend: str) -> torch.Tensor:
    return fused_linear_topk_kd_loss(x["hidden"], x["weight"], x["labels"], x["target_ids"], x["target_logprobs"],
                                     backend=backend)[0]


def _eager(x) -> torch.Tensor:
    mask = completion_mask(x["labels"])
    ids = torch.where(mask[..., None], x["target_ids"], eager.IGNORE_INDEX)
    student = eager.token_logps(x["hidden"], x["weight"], ids)
    return topk_kd_loss(student, x["target_logprobs"], mask)[0]


OP = OpSpec(
    name="kd",
    title=f"top-k KD loss (K={TOP_K})",
    make_inputs=make_inputs,
    impls=standard_impls(
        _fusedrl,
        _eager,
        unsupported("liger", "no top-k teacher-logprob loss (its distillation losses take full teacher logits)"),
        unsupported("cce", "gathers one label per token; no K-id logprobs"),
    ),
)
