"""Linear cross-entropy (SFT): mean NLL over non-ignored tokens.

hidden ``[N, H]``, weight ``[V, H]``, labels ``[N]`` -> scalar loss.
"""
from __future__ import annotations

import torch

from fusedrl.kernels import linear_cross_entropy

from .. import eager, synthetic
from ..competitors import loss_tensor
from ..spec import BuildOptions, Case, Impl, ImplSpec, OpSpec
from .impls import standard_impls


def make_inputs(case: Case, device: torch.device) -> dict[str, torch.Tensor]:
    """hidden ``[N, H]`` and weight ``[V, H]`` (grad leaves), labels ``[N]`` with masked prompts."""
    rows, seq = case.layout()
    gen = synthetic.generator(device)
    return {
        "hidden": synthetic.hidden_states((case.n, case.h), case.torch_dtype, device, gen),
        "weight": synthetic.lm_head(case.v, case.h, case.torch_dtype, device, gen),
        "labels": synthetic.labels(rows, seq, case.v, device, gen, case.prompt_fraction).flatten(),
    }


def _fusedrl(x, backend: str) -> torch.Tensor:
    return linear_cross_entropy(x["hidden"], x["weight"], x["labels"], backend=backend)


def _eager(x) -> torch.Tensor:
    return eager.cross_entropy(x["hidden"], x["weight"], x["labels"])


def _liger(options: BuildOptions) -> Impl:
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    loss = LigerFusedLinearCrossEntropyLoss(ignore_index=eager.IGNORE_INDEX)
    return lambda x: loss_tensor(loss(x["weight"], x["hidden"], x["labels"]))


def _cce(options: BuildOptions) -> Impl:
    from cut_cross_entropy import linear_cross_entropy as cce_linear_cross_entropy

    return lambda x: cce_linear_cross_entropy(x["hidden"], x["weight"], x["labels"], ignore_index=eager.IGNORE_INDEX)


OP = OpSpec(
    name="ce",
    title="linear cross-entropy (SFT)",
    make_inputs=make_inputs,
    impls=standard_impls(
        _fusedrl,
        _eager,
        ImplSpec("liger", _liger, library="liger", cuda_only=True),
        ImplSpec("cce", _cce, library="cce", cuda_only=True),
    ),
)
