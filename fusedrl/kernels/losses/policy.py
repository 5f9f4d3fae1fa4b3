"""PPO on per-token tensors: KL estimators, KL-penalised rewards, GAE, clipped policy and value losses.

Token tensors are ``[B, T]`` with a bool ``mask`` over completion tokens (one
contiguous span per row); logprobs are those of the sampled tokens at the sampling
temperature. Reductions are masked means over every completion token of the batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_batch, check_choice, check_lengths, check_range, check_tokens
from .sequence import masked_mean, masked_sum, masked_whiten

KL_ESTIMATORS = ("k1", "k3")


def token_kl(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled-token logprobs ``[B, T]``, fp32.

    ``k1 = L - R``; ``k3 = e^(R - L) - (R - L) - 1`` (non-negative, low variance).
    """
    check_choice("estimator", estimator, KL_ESTIMATORS)
    log_ratio = logps.float() - ref_logps.float()
    if estimator == "k1":
        return log_ratio
    return torch.expm1(-log_ratio) + log_ratio


def ppo_rewards(
    scores: torch.Tensor,
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_coef: float = 0.05,
    kl_estimator: str = "k1",
):
    """Per-token PPO rewards: ``-kl_coef * KL_t`` everywhere, plus the score at the last completion token.

    Args: reward-model ``scores [B]``; policy and reference ``logps [B, T]``; ``mask [B, T]``.
    Returns: ``(rewards [B, T] fp32 detached, 0 off the mask; metrics)`` with the rollout metrics
        objective/{kl, entropy, non_score_reward, rlhf_reward, scores} (per-sequence sums, batch
        means; entropy is the sampled-token estimate ``sum_t -L_t``).
    """
    check_tokens(mask, logps=logps, ref_logps=ref_logps)
    check_batch("scores", scores, mask.shape[0], like="mask")
    check_range("kl_coef", kl_coef)
    check_lengths("mask", mask.sum(-1))
    scores = scores.detach().float()
    kl = torch.where(mask, token_kl(logps.detach(), ref_logps.detach(), kl_estimator), 0.0)
    non_score = -kl_coef * kl
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(mask, positions, -1).max(-1).values
    rewards = non_score + scores[:, None] * (positions == last[:, None])
    non_score_reward = non_score.sum(-1).mean()
    metrics = {
        "objective/kl": kl.sum(-1).mean(),
        "objective/entropy": masked_sum(-logps.detach(), mask, dim=-1).mean(),
        "objective/non_score_reward": non_score_reward,
        "objective/rlhf_reward": non_score_reward + scores.mean(),
        "objective/scores": scores.mean(),
    }
    return rewards, metrics


def gae_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
    whiten_rewards: bool = False,
    whiten_advantages: bool = True,
):
    """Generalised advantage estimation over the completion span of each row.

    ``delta_t = r_t + gamma * V_(t+1) - V_t``, ``A_t = delta_t + gamma * lam * A_(t+1)``, with
    ``V`` and ``A`` zero past the last completion token; ``returns = A + V``.

    Args: ``rewards, values, mask`` ``[B, T]``. ``whiten_rewards`` rescales the masked rewards
        without shifting their mean first; ``whiten_advantages`` whitens A over the mask.
    Returns: ``(advantages [B, T], returns [B, T])``, fp32, detached, 0 off the mask.
    """
    check_tokens(mask, rewards=rewards, values=values)
    check_range("gamma", gamma, 0.0, 1.0)
    check_range("lam", lam, 0.0, 1.0)
    rewards, values = rewards.detach().float(), values.detach().float()
    if whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False)
    rewards = torch.where(mask, rewards, 0.0)
    values = torch.where(mask, values, 0.0)
    next_values = F.pad(values[:, 1:], (0, 1))
    deltas = rewards + gamma * next_values - values
    steps = []
    running = torch.zeros_like(deltas[:, 0])
    for t in reversed(range(deltas.shape[1])):
        running = deltas[:, t] + gamma * lam * running
        steps.append(running)
    advantages = torch.where(mask, torch.stack(steps[::-1], dim=1), 0.0)
    returns = torch.where(mask, advantages + values, 0.0)
    if whiten_advantages:
        advantages = torch.where(mask, masked_whiten(advantages, mask), 0.0)
    return advantages, returns


def ppo_policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    cliprange: float = 0.2,
):
    """Clipped surrogate ``masked_mean(max(-A * rho, -A * clip(rho, 1 - c, 1 + c)))``, ``rho = e^(L - L_old)``.

    Args: ``logps`` (with grad), ``old_logps``, ``advantages``, ``mask``, all ``[B, T]``.
    Returns: ``(loss scalar fp32, metrics)`` with policy/approxkl_avg (``0.5 * mean((L - L_old)^2)``),
        policy/clipfrac_avg and loss/policy_avg.
    """
    check_tokens(mask, logps=logps, old_logps=old_logps, advantages=advantages)
    check_range("cliprange", cliprange, 0.0, 1.0, low_open=True, high_open=True)
    log_ratio = torch.where(mask, logps.float() - old_logps.detach().float(), 0.0)
    ratio = torch.exp(log_ratio)
    advantages = advantages.detach().float()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    metrics = {
        "policy/approxkl_avg": 0.5 * masked_mean(log_ratio.detach().square(), mask),
        "policy/clipfrac_avg": masked_mean((clipped > unclipped).float(), mask),
        "loss/policy_avg": loss.detach(),
    }
    return loss, metrics


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    cliprange_value: float = 0.2,
):
    """Clipped value loss ``0.5 * masked_mean(max((v - ret)^2, (clip(v, v_old -+ cv) - ret)^2))``.

    Args: ``values`` (with grad), ``old_values``, ``returns``, ``mask``, all ``[B, T]``.
    Returns: ``(loss scalar fp32, metrics)`` with loss/value_avg and val/clipfrac_avg.
    """
    check_tokens(mask, values=values, old_values=old_values, returns=returns)
    check_range("cliprange_value", cliprange_value, 0.0, low_open=True)
    values = values.float()
    old_values, returns = old_values.detach().float(), returns.detach().float()
    clipped_values = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    unclipped_loss = (values - returns).square()
    clipped_loss = (clipped_values - returns).square()
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    metrics = {
        "loss/value_avg": loss.detach(),
        "val/clipfrac_avg": masked_mean((clipped_loss > unclipped_loss).detach().float(), mask),
    }
    return loss, metrics
