"""GRPO: group-relative advantages from weighted reward functions, and the clipped token loss."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from .checks import check_batch, check_choice, check_range, check_tokens
from .policy import token_kl
from .sequence import global_mean_and_std, global_quantile, global_std, masked_mean, masked_sum

SCALE_REWARDS = ("group", "batch", "none")
MULTI_OBJECTIVE_AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")
GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")
# Loss types without a clip range (and so without delta's cap on an unclipped term).
UNCLIPPED_LOSS_TYPES = ("cispo", "sapo", "vespo")
# Loss types defined at one importance-sampling level only.
LOSS_TYPE_LEVELS = {"luspo": "sequence", "vespo": "token"}
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
ADVANTAGE_EPS = 1e-4


def _reward_matrix(rewards: Mapping[str, Sequence[float | None] | torch.Tensor], device) -> torch.Tensor:
    """``[B, F]`` fp32 rewards, one column per function, NaN where a function returned None."""
    columns = []
    for name, values in rewards.items():
        if isinstance(values, torch.Tensor):
            column = values.detach().to(device=device, dtype=torch.float32)
        else:
            column = torch.tensor([math.nan if v is None else float(v) for v in values], device=device)
        if column.dim() != 1 or (columns and column.shape[0] != columns[0].shape[0]):
            first = columns[0].shape[0] if columns else column.shape[0]
            raise ValueError(f"rewards[{name!r}]: expected {first} per-sample rewards, got shape {list(column.shape)}")
        columns.append(column)
    return torch.stack(columns, dim=1)


def weighted_rewards(
    rewards: Mapping[str, Sequence[float | None] | torch.Tensor],
    reward_weights: Sequence[float] | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(total [B], per_function [B, F])`` fp32: each sample's ``reward_weights``-weighted sum of its rewards.

    ``rewards`` maps a reward-function name to ``B`` rewards (list with None, or a ``[B]`` tensor); a None (NaN)
    leaves that function out of that sample's sum. Weights: one per function in the mapping's order (default
    1.0 each). ``device``: where list rewards are placed (tensors keep theirs when None)."""
    if not isinstance(rewards, Mapping) or not rewards:
        raise ValueError("rewards: expected a non-empty mapping of reward-function name -> per-sample rewards")
    if device is None:
        device = next((v.device for v in rewards.values() if isinstance(v, torch.Tensor)), "cpu")
    per_func = _reward_matrix(rewards, device)
    return (per_func * _weight_vector(reward_weights, per_func)).nansum(dim=1), per_func


def _weight_vector(reward_weights: Sequence[float] | None, per_func: torch.Tensor) -> torch.Tensor:
    """``[F]`` fp32 weights of the ``per_func [B, F]`` columns (1.0 each when None)."""
    num_funcs = per_func.shape[1]
    weights = torch.ones(num_funcs, device=per_func.device) if reward_weights is None else torch.tensor(
        [float(w) for w in reward_weights], device=per_func.device)
    if weights.shape != (num_funcs,):
        raise ValueError(f"reward_weights: expected {num_funcs} weights (one per reward function), "
                         f"got {len(reward_weights)}")
    return weights


def grpo_advantages(
    rewards: Mapping[str, Sequence[float | None] | torch.Tensor],
    *,
    num_generations: int,
    reward_weights: Sequence[float] | None = None,
    scale_rewards: str = "group",
    multi_objective_aggregation: str = "sum_then_normalize",
    device: torch.device | str | None = None,
):
    """Group-relative advantages ``A_i = (r_i - mean_group) / (std + 1e-4)`` (unbiased std).

    Args:
        rewards: reward-function name -> ``B`` rewards (list with None, or a ``[B]`` tensor). A None
            (NaN) leaves that function out of that sample's weighted sum ``r_i``.
        num_generations: completions per prompt G >= 2; rows ``[g*G, (g+1)*G)`` form group g.
        reward_weights: one weight per function, in the mapping's order (default 1.0 each).
        scale_rewards: ``group`` (std of the group), ``batch`` (std of the batch, every rank's rewards when
            torch.distributed is initialised, as TRL gathers them) or ``none``.
        multi_objective_aggregation: ``sum_then_normalize`` (the above, on the weighted sum ``r_i``) or
            ``normalize_then_sum`` (GDPO, TRL's key): each function's rewards are normalised within each group
            first (mean and unbiased std of the samples it scored), the weighted sum of those is then centred and
            scaled over the whole batch (every rank's rows); ``scale_rewards`` is not read.
        device: where list rewards are placed (tensors keep theirs when None).

    Returns:
        ``(advantages [B] fp32, metrics)`` with reward (batch mean of ``r``), reward_std (mean group
        std), frac_reward_zero_std (fraction of groups with zero std) and rewards/<name>/mean
        (mean over the samples the function scored).
    """
    check_choice("scale_rewards", scale_rewards, SCALE_REWARDS)
    check_choice("multi_objective_aggregation", multi_objective_aggregation, MULTI_OBJECTIVE_AGGREGATIONS)
    total, per_func = weighted_rewards(rewards, reward_weights, device)
    grouped = grouped_rewards(total, num_generations)
    group_std = grouped.std(dim=1)
    advantages = total - grouped.mean(dim=1).repeat_interleave(num_generations)
    if multi_objective_aggregation == "normalize_then_sum":
        advantages = _normalize_then_sum(per_func, _weight_vector(reward_weights, per_func), num_generations)
    elif scale_rewards == "group":
        advantages = advantages / (group_std.repeat_interleave(num_generations) + ADVANTAGE_EPS)
    elif scale_rewards == "batch":
        advantages = advantages / (global_std(total) + ADVANTAGE_EPS)
    metrics = {
        "reward": total.mean(),
        "reward_std": group_std.mean(),
        "frac_reward_zero_std": torch.isclose(group_std, torch.zeros_like(group_std)).float().mean(),
        **reward_function_means(rewards, per_func),
    }
    return advantages, metrics


def _normalize_then_sum(per_func: torch.Tensor, weights: torch.Tensor, num_generations: int) -> torch.Tensor:
    """GDPO's advantages ``[B]``: each column of ``per_func [B, F]`` normalised within each group over the samples
    it scored (NaN: not scored, left out of the sum), weighted and summed, then centred and scaled batch-wide."""
    grouped = per_func.view(-1, num_generations, per_func.shape[1])
    scored = ~grouped.isnan()
    count = scored.sum(dim=1, keepdim=True)
    mean = grouped.nansum(dim=1, keepdim=True) / count.clamp(min=1)
    var = torch.where(scored, grouped - mean, 0.0).square().sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)
    normalised = ((grouped - mean) / (var.sqrt() + ADVANTAGE_EPS)).reshape(per_func.shape)
    summed = (normalised * weights).nansum(dim=1)
    batch_mean, batch_std = global_mean_and_std(summed)
    return (summed - batch_mean) / (batch_std + ADVANTAGE_EPS)


def grouped_rewards(total: torch.Tensor, num_generations: int) -> torch.Tensor:
    """``total [B]`` as ``[B / G, G]``: one row per prompt's group of ``num_generations`` (G >= 2) completions."""
    if not isinstance(num_generations, int) or isinstance(num_generations, bool) or num_generations < 2:
        raise ValueError(f"num_generations: expected an int >= 2, got {num_generations!r}")
    if total.shape[0] % num_generations:
        raise ValueError(f"rewards: expected a multiple of num_generations={num_generations} samples, "
                         f"got {total.shape[0]}")
    return total.view(-1, num_generations)


def reward_function_means(rewards: Mapping, per_func: torch.Tensor) -> dict[str, torch.Tensor]:
    """``rewards/<name>/mean`` of each function of ``rewards``: the mean over the samples it scored (its column
    of ``per_func [B, F]``, NaN where it returned None)."""
    return {f"rewards/{name}/mean": column.nanmean() for name, column in zip(rewards, per_func.unbind(dim=1))}


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logps: torch.Tensor | None = None,
    beta: float = 0.04,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    importance_sampling_level: str = "token",
    loss_type: str = "grpo",
    max_completion_length: int | None = None,
    num_items_in_batch: float | None = None,
    entropy: torch.Tensor | None = None,
    top_entropy_quantile: float = 1.0,
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
    vespo_k_pos: float = 2.0,
    vespo_lambda_pos: float = 3.0,
    vespo_k_neg: float = 3.0,
    vespo_lambda_neg: float = 2.0,
    off_policy_mask_threshold: float | None = None,
    use_bias_correction_kl: bool = False,
):
    """GRPO loss per token ``-min(rho * A, clip(rho, 1 - eps, 1 + eps_high) * A) + beta * k3``, aggregated.

    Args:
        logps: policy logprobs of the sampled tokens ``[B, T]`` (with grad), at the sampling temperature.
        old_logps: the sampling policy's ``[B, T]``; None means this very policy (``rho = 1``).
        advantages: ``[B]``; mask: ``[B, T]`` bool over completion tokens.
        ref_logps: reference ``[B, T]``, required when ``beta > 0`` (k3 KL penalty).
        epsilon, epsilon_high: clip range (``epsilon_high`` defaults to ``epsilon``).
        delta: optional cap on ``rho`` in the unclipped term (two-sided clipping); > 1 + epsilon_high.
        importance_sampling_level: ``token`` (``rho_t = e^(L_t - L_old,t)``) or ``sequence`` (one
            ``rho`` per row from the masked mean of the token log ratios).
        loss_type: ``grpo`` (mean over rows of the per-row token mean), ``bnpo`` (mean over the
            batch's tokens), ``dr_grpo`` (sum / (B * max_completion_length), default T), ``dapo``
            (sum / ``num_items_in_batch``: the completion tokens of the global batch divided by the
            number of processes; default this batch's tokens). ``cispo`` (MiniMax-M1) changes the token loss to
            ``-sg(min(rho, 1 + eps_high)) * A * L_t``: the clipped importance weight, without gradient, times the
            policy-gradient term, so no token's gradient is dropped; aggregated as ``dapo``. Its cap is
            ``1 + epsilon_high`` like the clip range above (TRL caps at ``epsilon_high`` itself). ``sapo``
            (Soft Adaptive Policy Optimization, as TRL) replaces the clip by a soft gate:
            ``-sigmoid(tau * (rho - 1)) * 4 / tau * A`` with ``tau = sapo_temperature_pos`` where A > 0, else
            ``sapo_temperature_neg`` (its gradient at rho = 1 is the plain policy gradient); aggregated as
            ``grpo``; it reads neither the clip range nor ``delta``. ``luspo`` (LUSPO, TRL's key): GSPO's clipped
            sequence-level loss weighted by the completion's length, i.e. each row's token losses summed, then
            the mean over rows; needs ``importance_sampling_level="sequence"``. ``vespo`` (VESPO, TRL's key): the
            token loss ``-sg(phi(w)) * A * L_t`` with ``w = e^(sum_t L_t - L_old,t)`` (the completion's ratio,
            log clamped to [log 1e-8, 20]) and the Gamma-shaped weight ``phi(w) = e^lam * w^k * e^(-lam * w)``
            (``phi(1) = 1``; k, lam from ``vespo_k_pos`` / ``vespo_lambda_pos`` where A >= 0, else the ``_neg``
            pair); aggregated as ``dapo``, no clip range, token level only.
        entropy: ``[B, T]`` entropy of the policy at each position (needed when ``top_entropy_quantile < 1``).
        top_entropy_quantile: rho of "Beyond the 80/20 Rule" (Wang et al. 2025; TRL's key): the policy term is
            kept only on tokens whose entropy is at least the ``1 - rho`` quantile of this micro-batch's
            completion-token entropies (every rank's); the KL term and the aggregation's token count keep every
            token. 1 keeps all; 0 only the highest.
        off_policy_mask_threshold: DeepSeek-V3.2's off-policy sequence masking (TRL's key): the policy term of a
            completion with a negative advantage is dropped when its mean token ``L_old - L`` exceeds this; None
            keeps all.
        use_bias_correction_kl: DeepSeek-V3.2's unbiased KL estimate: the k3 term times ``rho`` (with its
            gradient), since the tokens were sampled from the old policy.

    Returns:
        ``(loss scalar fp32, metrics)`` with clip_ratio/{low,high,region}_mean (token fractions of
        ``rho`` clipped below with A < 0, above with A > 0, either) and kl (token mean) when beta > 0.
    """
    check_tokens(mask, logps=logps, old_logps=old_logps, ref_logps=ref_logps)
    check_batch("advantages", advantages, mask.shape[0], like="mask")
    check_choice("importance_sampling_level", importance_sampling_level, IMPORTANCE_SAMPLING_LEVELS)
    check_choice("loss_type", loss_type, GRPO_LOSS_TYPES)
    check_importance_sampling_level(loss_type, importance_sampling_level)
    check_range("beta", beta, 0.0)
    check_range("epsilon", epsilon, 0.0, 1.0, high_open=True)
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    check_range("epsilon_high", epsilon_high, 0.0)
    if delta is not None:
        check_range("delta", delta, 1.0 + epsilon_high, low_open=True)
        if loss_type in UNCLIPPED_LOSS_TYPES:
            raise ValueError(f"delta: loss_type {loss_type} has no unclipped importance-weight term to cap")
    if max_completion_length is not None:
        check_range("max_completion_length", max_completion_length, 0, low_open=True)
    if num_items_in_batch is not None:
        check_range("num_items_in_batch", num_items_in_batch, 0, low_open=True)
    if beta > 0 and ref_logps is None:
        raise ValueError("ref_logps: required when beta > 0 (the k3 KL penalty to the reference)")
    check_range("top_entropy_quantile", top_entropy_quantile, 0.0, 1.0)
    check_range("sapo_temperature_pos", sapo_temperature_pos, 0.0, low_open=True)
    check_range("sapo_temperature_neg", sapo_temperature_neg, 0.0, low_open=True)
    for name, value in (("vespo_k_pos", vespo_k_pos), ("vespo_lambda_pos", vespo_lambda_pos),
                        ("vespo_k_neg", vespo_k_neg), ("vespo_lambda_neg", vespo_lambda_neg)):
        check_range(name, value, 0.0)
    if top_entropy_quantile < 1.0:
        if entropy is None:
            raise ValueError("entropy: required when top_entropy_quantile < 1 (the tokens to keep are chosen by it)")
        check_tokens(mask, entropy=entropy)
    old = logps.detach() if old_logps is None else old_logps.detach()
    log_ratio = torch.where(mask, logps.float() - old.float(), 0.0)
    if importance_sampling_level == "sequence":
        log_ratio = masked_mean(log_ratio, mask, dim=-1)[:, None]
    ratio = torch.exp(log_ratio)
    adv = advantages.detach().float()[:, None]
    if loss_type == "cispo":
        per_token = -ratio.clamp(max=1.0 + epsilon_high).detach() * adv * logps.float()
    elif loss_type == "sapo":
        tau = torch.where(adv > 0, sapo_temperature_pos, sapo_temperature_neg)
        per_token = -torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau) * adv
    elif loss_type == "vespo":
        k = torch.where(adv >= 0, vespo_k_pos, vespo_k_neg)
        lam = torch.where(adv >= 0, vespo_lambda_pos, vespo_lambda_neg).clamp(min=1e-4)
        per_token = -_vespo_weight(log_ratio.detach(), mask, k, lam) * adv * logps.float()
    else:
        clipped = ratio.clamp(1.0 - epsilon, 1.0 + epsilon_high)
        capped = ratio if delta is None else ratio.clamp(max=delta)
        per_token = -torch.minimum(capped * adv, clipped * adv)
    if off_policy_mask_threshold is not None:
        drift = masked_mean(old.float() - logps.detach().float(), mask, dim=-1)
        per_token = per_token * ((adv[:, 0] >= 0) | (drift <= off_policy_mask_threshold))[:, None]
    if top_entropy_quantile < 1.0:
        threshold = global_quantile(entropy.detach()[mask], 1.0 - top_entropy_quantile)
        per_token = per_token * (entropy.detach() >= threshold)
    metrics = {}
    if beta > 0:
        kl = token_kl(torch.where(mask, logps.float(), 0.0), torch.where(mask, ref_logps.float(), 0.0), "k3")
        per_token = per_token + beta * (kl * ratio if use_bias_correction_kl else kl)
        metrics["kl"] = masked_mean(kl.detach(), mask)
    loss = _aggregate(per_token, mask, loss_type, max_completion_length, num_items_in_batch)
    low = (ratio < 1.0 - epsilon) & (adv < 0)
    high = (ratio > 1.0 + epsilon_high) & (adv > 0)
    if loss_type == "cispo":  # the cap weighs tokens of either advantage sign
        low, high = torch.zeros_like(low), ratio > 1.0 + epsilon_high
    elif loss_type in ("sapo", "vespo"):  # a soft gate, a smooth weight: nothing is clipped
        low = high = torch.zeros_like(low)
    metrics["clip_ratio/low_mean"] = masked_mean(low.float(), mask)
    metrics["clip_ratio/high_mean"] = masked_mean(high.float(), mask)
    metrics["clip_ratio/region_mean"] = masked_mean((low | high).float(), mask)
    return loss, metrics


def check_importance_sampling_level(loss_type: str, importance_sampling_level: str) -> None:
    """Refuse a ratio level ``loss_type`` is not defined at: luspo weighs GSPO's sequence ratio, vespo is token
    level."""
    wanted = LOSS_TYPE_LEVELS.get(loss_type)
    if wanted and importance_sampling_level != wanted:
        raise ValueError(f"importance_sampling_level: loss_type {loss_type} needs {wanted}, "
                         f"got {importance_sampling_level!r}")


def _vespo_weight(log_ratio: torch.Tensor, mask: torch.Tensor, k: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """VESPO's ``[B, 1]`` weight ``phi(w) = e^(lam + k log w - lam w)`` of each completion's ratio ``w`` (the sum of
    its token log ratios ``[B, T]``, each clamped to [-20, 20], then clamped to [log 1e-8, 20]); 0 where it
    overflows. ``k``, ``lam``: ``[B, 1]``."""
    log_w = masked_sum(log_ratio.clamp(-20.0, 20.0), mask, dim=-1)[:, None].clamp(math.log(1e-8), 20.0)
    return torch.exp(lam + k * log_w - lam * log_w.exp()).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def _aggregate(per_token, mask, loss_type, max_completion_length, num_items_in_batch):
    """Reduce the per-token losses ``[B, T]`` (or ``[B, 1]``, broadcast over the mask) as ``loss_type`` says."""
    if loss_type in ("grpo", "sapo"):
        return masked_mean(per_token, mask, dim=-1).mean()
    if loss_type == "luspo":
        return masked_sum(per_token, mask, dim=-1).mean()
    if loss_type == "bnpo":
        return masked_mean(per_token, mask)
    if loss_type == "dr_grpo":
        length = mask.shape[1] if max_completion_length is None else max_completion_length
        return masked_sum(per_token, mask) / (mask.shape[0] * length)
    tokens = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch  # dapo, cispo, vespo
    return masked_sum(per_token, mask) / tokens
