"""RLOO (REINFORCE Leave-One-Out, Ahmadian et al. 2024; TRL's ``RLOOTrainer``): leave-one-out advantages of
KL-shaped rewards, and the clipped loss of whole completions."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .checks import check_batch, check_range, check_tokens
from .grpo import ADVANTAGE_EPS, grouped_rewards, reward_function_means, weighted_rewards
from .sequence import global_mean_and_std, sequence_logps


def rloo_advantages(
    rewards: Mapping[str, Sequence[float | None] | torch.Tensor],
    *,
    num_generations: int,
    reward_weights: Sequence[float] | None = None,
    sequence_kl: torch.Tensor | None = None,
    beta: float = 0.05,
    reward_clip_range: Sequence[float] | None = None,
    normalize_advantages: bool = False,
    device: torch.device | str | None = None,
):
    """Leave-one-out advantages ``A_i = r'_i - mean_{j != i} r'_j`` over each group of ``num_generations``.

    ``r'_i = clip(r_i) - beta * kl_i``: the ``reward_weights``-weighted sum of the rewards (a None leaves that
    function out of the row's sum), clipped to ``reward_clip_range`` when given, less ``beta`` times the
    completion's summed KL to the reference (the KL penalty is part of the reward, not of the loss).

    Args:
        rewards: reward-function name -> ``B`` rewards (list with None, or a ``[B]`` tensor).
        num_generations: completions per prompt G >= 2; rows ``[g*G, (g+1)*G)`` form group g.
        sequence_kl: ``[B]`` sum over each completion's tokens of ``L_old - L_ref`` (required when beta > 0).
        reward_clip_range: ``(low, high)`` bounds of the weighted reward; None: no clipping.
        normalize_advantages: divide ``A - mean(A)`` by ``std(A) + 1e-4``, over the whole batch (every rank's
            rows when torch.distributed is initialised).
        device: where list rewards are placed (tensors keep theirs when None).

    Returns:
        ``(advantages [B] fp32, metrics)`` with reward and reward_std (mean and batch std of the weighted reward,
        before clipping and KL), frac_reward_zero_std (fraction of groups whose shaped rewards are all equal: their
        advantages are 0), rewards/<name>/mean, and kl_penalty (mean of ``beta * kl``) when beta > 0.
    """
    check_range("beta", beta, 0.0)
    if beta > 0 and sequence_kl is None:
        raise ValueError("sequence_kl: required when beta > 0 (the KL penalty is subtracted from the reward)")
    total, per_func = weighted_rewards(rewards, reward_weights, device)
    shaped = total
    if reward_clip_range is not None:
        low, high = reward_clip_bounds(reward_clip_range)
        shaped = shaped.clamp(low, high)
    if beta > 0:
        check_batch("sequence_kl", sequence_kl, total.shape[0], like="rewards")
        shaped = shaped - beta * sequence_kl.detach().float().to(shaped.device)
    grouped = grouped_rewards(shaped, num_generations)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (num_generations - 1)
    advantages = (grouped - baseline).reshape(-1)
    if normalize_advantages:
        mean, std = global_mean_and_std(advantages)
        advantages = (advantages - mean) / (std + ADVANTAGE_EPS)
    group_std = grouped.std(dim=1)
    metrics = {
        "reward": total.mean(),
        "reward_std": global_mean_and_std(total)[1],
        "frac_reward_zero_std": torch.isclose(group_std, torch.zeros_like(group_std)).float().mean(),
        **reward_function_means(rewards, per_func),
    }
    if beta > 0:
        metrics["kl_penalty"] = beta * sequence_kl.detach().float().mean()
    return advantages, metrics


def reward_clip_bounds(reward_clip_range: Sequence[float]) -> tuple[float, float]:
    """``(low, high)`` of ``reward_clip_range``: two numbers, low < high."""
    bounds = list(reward_clip_range) if isinstance(reward_clip_range, (list, tuple)) else []
    if len(bounds) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds) \
            or not bounds[0] < bounds[1]:
        raise ValueError(f"reward_clip_range: expected two numbers [low, high] with low < high, "
                         f"got {reward_clip_range!r}")
    return float(bounds[0]), float(bounds[1])


def rloo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
):
    """RLOO loss per completion ``-min(rho * A, clip(rho, 1 - eps, 1 + eps_high) * A)``, mean over completions.

    A completion is one action: ``rho = exp(sum_t L_t - sum_t L_old,t)`` over its tokens (TRL's ratio of
    sequence logprobs, not GSPO's mean).

    Args:
        logps: policy logprobs of the sampled tokens ``[B, T]`` (with grad), at the sampling temperature.
        old_logps: the sampling policy's ``[B, T]``; None means this very policy (``rho = 1``).
        advantages: ``[B]``; mask: ``[B, T]`` bool over completion tokens.
        epsilon, epsilon_high: clip range (``epsilon_high`` defaults to ``epsilon``).

    Returns:
        ``(loss scalar fp32, metrics)`` with clip_ratio/{low,high,region}_mean: fractions of completions whose
        ``rho`` is clipped below with A < 0, above with A > 0, either.
    """
    check_tokens(mask, logps=logps, old_logps=old_logps)
    check_batch("advantages", advantages, mask.shape[0], like="mask")
    check_range("epsilon", epsilon, 0.0, 1.0, high_open=True)
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    check_range("epsilon_high", epsilon_high, 0.0)
    seq_logps = sequence_logps(logps, mask)
    old = seq_logps.detach() if old_logps is None else sequence_logps(old_logps.detach(), mask)
    ratio = torch.exp(seq_logps - old)
    adv = advantages.detach().float()
    clipped = ratio.clamp(1.0 - epsilon, 1.0 + epsilon_high)
    loss = -torch.minimum(ratio * adv, clipped * adv).mean()
    low = (ratio < 1.0 - epsilon) & (adv < 0)
    high = (ratio > 1.0 + epsilon_high) & (adv > 0)
    metrics = {
        "clip_ratio/low_mean": low.float().mean(),
        "clip_ratio/high_mean": high.float().mean(),
        "clip_ratio/region_mean": (low | high).float().mean(),
    }
    return loss, metrics
