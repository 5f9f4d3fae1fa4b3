"""One-call online-RL losses from hidden states and the lm_head weight: GRPO, RLOO and PPO.

``hidden [B, T, H]`` and ``labels [B, T]`` (already shifted: position t holds the
sampled token t+1; prompt and padding are ``ignore_index``). Token logprobs are taken
at the sampling ``temperature`` (after the optional logit ``softcap``) through the fused
kernel; no ``[tokens, vocab]`` tensor is built.
"""
from __future__ import annotations

import torch

from ..logprobs import linear_logprobs
from .checks import check_range
from .fused_common import check_hidden_labels, reference_token_logps
from .grpo import grpo_loss
from .policy import ppo_policy_loss, ppo_value_loss
from .rloo import rloo_loss
from .sequence import completion_mask, masked_mean


def fused_linear_grpo_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    advantages: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    old_logps: torch.Tensor | None = None,
    ref_logps: torch.Tensor | None = None,
    ref_hidden: torch.Tensor | None = None,
    ref_weight: torch.Tensor | None = None,
    ref_bias: torch.Tensor | None = None,
    beta: float = 0.04,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    importance_sampling_level: str = "token",
    loss_type: str = "grpo",
    max_completion_length: int | None = None,
    num_items_in_batch: float | None = None,
    top_entropy_quantile: float = 1.0,
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
    vespo_k_pos: float = 2.0,
    vespo_lambda_pos: float = 3.0,
    vespo_k_neg: float = 3.0,
    vespo_lambda_neg: float = 2.0,
    off_policy_mask_threshold: float | None = None,
    use_bias_correction_kl: bool = False,
    temperature: float = 0.9,
    softcap: float | None = None,
    ignore_index: int = -100,
    backend: str = "auto",
):
    """GRPO from hidden states: ``grpo_loss`` on the policy's token logprobs at ``temperature``.

    Args:
        hidden ``[B, T, H]``, weight ``[V, H]``, labels ``[B, T]``, advantages ``[B]``, bias ``[V]``.
        old_logps: ``[B, T]`` logprobs of the sampling policy (None: this policy, ``rho = 1``).
        The reference (needed when beta > 0): ``ref_logps [B, T]``, or ``ref_hidden [B, T, H]`` through
            ``ref_weight`` / ``ref_bias`` (default: the policy head) under no_grad.
        Everything else as in ``grpo_loss``; ``top_entropy_quantile`` selects tokens by the entropy the kernel
        returns beside the logprobs (at ``temperature``), at no extra pass over the vocabulary.

    Returns:
        ``(loss scalar fp32, metrics)``: clip_ratio/{low,high,region}_mean, entropy (token mean at
        ``temperature``) and kl when beta > 0.
    """
    check_hidden_labels(hidden, labels)
    check_range("beta", beta, 0.0)
    if ref_hidden is not None and ref_logps is not None:
        raise ValueError("ref_hidden: give either ref_hidden or ref_logps, not both")
    logps, entropy = linear_logprobs(hidden, weight, labels, bias=bias, temperature=temperature, softcap=softcap,
                                     ignore_index=ignore_index, return_entropy=True, backend=backend)
    mask = completion_mask(labels, ignore_index)
    if beta > 0 and ref_hidden is not None:
        ref_logps = reference_token_logps(ref_hidden, labels, ref_weight=ref_weight, ref_bias=ref_bias,
                                          weight=weight, bias=bias, temperature=temperature,
                                          softcap=softcap, ignore_index=ignore_index, backend=backend)
    loss, metrics = grpo_loss(
        logps, old_logps, advantages, mask, ref_logps=ref_logps if beta > 0 else None, beta=beta, epsilon=epsilon,
        epsilon_high=epsilon_high, delta=delta, importance_sampling_level=importance_sampling_level,
        loss_type=loss_type, max_completion_length=max_completion_length, num_items_in_batch=num_items_in_batch,
        entropy=entropy, top_entropy_quantile=top_entropy_quantile, sapo_temperature_pos=sapo_temperature_pos,
        sapo_temperature_neg=sapo_temperature_neg, vespo_k_pos=vespo_k_pos, vespo_lambda_pos=vespo_lambda_pos,
        vespo_k_neg=vespo_k_neg, vespo_lambda_neg=vespo_lambda_neg, off_policy_mask_threshold=off_policy_mask_threshold,
        use_bias_correction_kl=use_bias_correction_kl,
    )
    metrics["entropy"] = masked_mean(entropy.detach(), mask)
    return loss, metrics


def fused_linear_rloo_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    advantages: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    old_logps: torch.Tensor | None = None,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    temperature: float = 0.9,
    softcap: float | None = None,
    ignore_index: int = -100,
    backend: str = "auto",
):
    """RLOO from hidden states: ``rloo_loss`` on the policy's token logprobs at ``temperature``.

    Args:
        hidden ``[B, T, H]``, weight ``[V, H]``, labels ``[B, T]``, advantages ``[B]`` (``rloo_advantages``: the
            KL to the reference is already in them), bias ``[V]``.
        old_logps: ``[B, T]`` logprobs of the sampling policy (None: this policy, ``rho = 1``).
        epsilon, epsilon_high: the clip range of the completion's ratio.

    Returns:
        ``(loss scalar fp32, metrics)``: clip_ratio/{low,high,region}_mean and entropy (token mean at
        ``temperature``).
    """
    check_hidden_labels(hidden, labels)
    logps, entropy = linear_logprobs(hidden, weight, labels, bias=bias, temperature=temperature, softcap=softcap,
                                     ignore_index=ignore_index, return_entropy=True, backend=backend)
    mask = completion_mask(labels, ignore_index)
    loss, metrics = rloo_loss(logps, old_logps, advantages, mask, epsilon=epsilon, epsilon_high=epsilon_high)
    metrics["entropy"] = masked_mean(entropy.detach(), mask)
    return loss, metrics

def fused_linear_ppo_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    bias: torch.Tensor | None = None,
    cliprange: float = 0.2,
    cliprange_value: float = 0.2,
    vf_coef: float = 0.1,
    temperature: float = 0.9,
    softcap: float | None = None,
    ignore_index: int = -100,
    backend: str = "auto",
):
    """PPO update loss ``pg + vf_coef * vf`` from the policy's hidden states and the value model's values.

    Args:
        hidden ``[B, T, H]``, weight ``[V, H]``, labels ``[B, T]``, bias ``[V]``.
        old_logps, advantages, old_values, returns: ``[B, T]`` from the rollout (``gae_advantages``).
        values: ``[B, T]`` current value-model predictions (with grad).

    Returns:
        ``(loss scalar fp32, metrics)``: policy/approxkl_avg, policy/clipfrac_avg, loss/policy_avg,
        loss/value_avg, val/clipfrac_avg.
    """
    check_hidden_labels(hidden, labels)
    check_range("vf_coef", vf_coef, 0.0)
    logps = linear_logprobs(hidden, weight, labels, bias=bias, temperature=temperature, softcap=softcap,
                            ignore_index=ignore_index, backend=backend)
    mask = completion_mask(labels, ignore_index)
    policy_loss, metrics = ppo_policy_loss(logps, old_logps, advantages, mask, cliprange=cliprange)
    value_loss, value_metrics = ppo_value_loss(values, old_values, returns, mask, cliprange_value=cliprange_value)
    metrics.update(value_metrics)
    return policy_loss + vf_coef * value_loss, metrics
