"""The autograd function shared by the fused backends (triton and chunked torch).

Forward saves only hidden, weight, bias, ids (and the token rows, when tokens were skipped), lse and
entropy; backward folds the upstream gradients of (logp, lse, entropy, logit_sum) into per-token
coefficients and lets the backend recompute logits block by block.
"""
from __future__ import annotations

from types import ModuleType

import torch

from .stats import LinearVocabProblem, StatsGrad, VocabStats


class _FusedVocabStats(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, ids, token_rows, temperature, softcap, backend_module, chunk_size):
        problem = LinearVocabProblem(hidden, weight, bias, ids, temperature, softcap, token_rows)
        raw = backend_module.forward_stats(problem, chunk_size)
        valid = ids >= 0
        logp = torch.where(valid, raw.target_logits - raw.lse[:, None], 0.0)
        ctx.save_for_backward(hidden, weight, bias, ids, token_rows, raw.lse, raw.entropy)
        ctx.temperature, ctx.softcap = temperature, softcap
        ctx.backend_module, ctx.chunk_size = backend_module, chunk_size
        max_logp = raw.max_logit - raw.lse
        ctx.mark_non_differentiable(max_logp, raw.log_sum_p_sq)
        ctx.set_materialize_grads(False)
        return logp, raw.lse, raw.entropy, raw.logit_sum, max_logp, raw.log_sum_p_sq

    @staticmethod
    def backward(ctx, g_logp, g_lse, g_entropy, g_logit_sum, _g_max_logp, _g_log_sum_p_sq):
        hidden, weight, bias, ids, token_rows, lse, entropy = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if not (need_h or need_w or need_b):
            return (None,) * 9
        valid = ids >= 0
        g_target = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
        if g_logp is not None:
            g_target = torch.where(valid, g_logp.float(), 0.0)
        coef_a = -g_target.sum(1)
        if g_lse is not None:
            coef_a = coef_a + g_lse.float()
        coef_c = None
        if g_entropy is not None:
            coef_c = g_entropy.float()
            coef_a = coef_a - coef_c * entropy
        grad = StatsGrad(
            g_target.contiguous(),
            coef_a.contiguous(),
            None if coef_c is None else coef_c.contiguous(),
            None if g_logit_sum is None else g_logit_sum.float().contiguous(),
        )
        problem = LinearVocabProblem(hidden, weight, bias, ids, ctx.temperature, ctx.softcap, token_rows)
        d_h, d_w, d_b = ctx.backend_module.backward_stats(problem, lse, grad, need_h, need_w, need_b, ctx.chunk_size)
        d_w = None if d_w is None else d_w.to(weight.dtype)
        d_b = None if d_b is None else d_b.to(bias.dtype)
        return d_h, d_w, d_b, None, None, None, None, None, None


def fused_vocab_stats(
    problem: LinearVocabProblem, backend_module: ModuleType, chunk_size: int | None
) -> VocabStats:
    """Differentiable ``VocabStats`` ``[M]`` of the problem's M tokens, computed by ``backend_module`` without a
    ``[N, V]`` tensor."""
    outs = _FusedVocabStats.apply(
        problem.hidden,
        problem.weight,
        problem.bias,
        problem.ids,
        problem.token_rows,
        problem.temperature,
        problem.softcap,
        backend_module,
        chunk_size,
    )
    return VocabStats(*outs)
