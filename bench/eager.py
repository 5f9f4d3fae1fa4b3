"""The eager baseline as users write it: full ``[N, V]`` logits in the input dtype, softmax in fp32."""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """fp32 ``[..., V]`` logits of ``hidden [..., H]`` under ``weight [V, H]`` (matmul in the input dtype)."""
    return (hidden @ weight.T).float()


def token_logps(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """fp32 logprobs of ``ids`` (``[...]`` or ``[..., K]`` for ``hidden [..., H]``), 0 where ``ids == -100``."""
    logp = torch.log_softmax(logits(hidden, weight), dim=-1)
    one_id = ids.dim() == hidden.dim() - 1
    index = ids.unsqueeze(-1) if one_id else ids
    picked = logp.gather(-1, index.clamp(min=0))
    picked = picked.squeeze(-1) if one_id else picked
    return torch.where(ids != IGNORE_INDEX, picked, 0.0)


def cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Scalar mean cross-entropy over non-ignored ``labels [N]`` for ``hidden [N, H]``."""
    return F.cross_entropy(logits(hidden, weight), labels, ignore_index=IGNORE_INDEX)


def topk_logprobs(hidden: torch.Tensor, weight: torch.Tensor, k: int) -> torch.Tensor:
    """``[N, k]`` fp32 top-k logprobs (descending) of ``hidden [N, H]`` over the full vocabulary."""
    return torch.log_softmax(logits(hidden, weight), dim=-1).topk(k, dim=-1).values
