"""Token logprobs, K=1 (GRPO/PPO per-token logps): hidden ``[N, H]``, weight ``[V, H]``, ids ``[N]`` -> ``[N]``.

The backward takes a random upstream gradient ``grad_out [N]``, as a policy loss would give.
"""
from __future__ import annotations

import torch

from fusedrl.kernels import linear_logprobs

from .. import eager, synthetic
from ..competitors import cce_token_logps, liger_token_logps
from ..spec import Case, ImplSpec, OpSpec
from .impls import standard_impls


def make_inputs(case: Case, device: torch.device) -> dict[str, torch.Tensor]:
    """hidden ``[N, H]``, weight ``[V, H]`` (grad leaves), ids ``[N]``, fp32 grad_out ``[N]``."""
    rows, seq = case.layout()
    gen = synthetic.generator(device)
    return {
        "hidden": synthetic.hidden_states((case.n, case.h), case.torch_dtype, device, gen),
        "weight": synthetic.lm_head(case.v, case.h, case.torch_dtype, device, gen),
        "ids": synthetic.labels(rows, seq, case.v, device, gen, case.prompt_fraction).flatten(),
        "grad_out": synthetic.standard_normal((case.n,), device, gen),
    }


def _fusedrl(x, backend: str) -> torch.Tensor:
    return linear_logprobs(x["hidden"], x["weight"], x["ids"], backend=backend)


def _eager(x) -> torch.Tensor:
    return eager.token_logps(x["hidden"], x["weight"], x["ids"])


OP = OpSpec(
    name="logprobs",
    title="token logprobs K=1 (GRPO/PPO)",
    make_inputs=make_inputs,
    impls=standard_impls(
        _fusedrl,
        _eager,
        ImplSpec("liger", lambda options: lambda x: liger_token_logps(x["hidden"], x["weight"], x["ids"]),
                 library="liger", cuda_only=True),
        ImplSpec("cce", lambda options: lambda x: cce_token_logps(x["hidden"], x["weight"], x["ids"]),
                 library="cce", cuda_only=True),
    ),
)
