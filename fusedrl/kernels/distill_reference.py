"""Eager reference of the full-vocabulary distillation divergence: materialises both ``[N, V]`` logits.

The ground truth the fused backends are tested against; never used in training.
"""
from __future__ import annotations

import torch

from .stats import LinearVocabProblem, apply_softcap


def _logprobs(problem: LinearVocabProblem) -> torch.Tensor:
    logits = problem.hidden.float() @ problem.weight.float().T
    if problem.bias is not None:
        logits = logits + problem.bias.float()
    return torch.log_softmax(apply_softcap(logits, problem.softcap) / problem.temperature, dim=-1)


def eager_distill_divergence(student: LinearVocabProblem, teacher: LinearVocabProblem, divergence: str,
                             beta: float) -> torch.Tensor:
    """Per-token divergence ``[N]`` (fp32) of the student from the teacher; see ``distill_chunked``."""
    logp, logq = _logprobs(student), _logprobs(teacher)
    p, q = logp.exp(), logq.exp()
    if divergence == "forward_kl":
        return (q * (logq - logp)).sum(-1)
    if divergence == "reverse_kl":
        return (p * (logp - logq)).sum(-1)
    logm = torch.log((1.0 - beta) * p + beta * q)
    return beta * (q * (logq - logm)).sum(-1) + (1.0 - beta) * (p * (logp - logm)).sum(-1)
