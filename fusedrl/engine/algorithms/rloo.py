"""RLOO (``rl: rloo``, TRL's ``RLOOTrainer``): REINFORCE with a leave-one-out baseline over each prompt's group.

The round is GRPO's (sampling, micro-batches, ``num_iterations`` updates per rollout);
what differs is the signal: each completion's reward, less ``beta`` times its summed
KL to the reference (``L_old - L_ref`` over its tokens, taken once when the rollout is
scored), minus the mean of the other completions of its prompt; and the loss treats a
completion as one action, clipping the ratio of its sequence probabilities.
"""
from __future__ import annotations

import torch

from ...kernels.losses import fused_linear_rloo_loss, rloo_advantages
from ...kernels.losses.sequence import masked_mean, masked_sum
from ..data import IGNORE_INDEX
from .base import float_metrics
from .grpo import GRPO


class RLOO(GRPO):
    """``rl: rloo``. Metrics: reward, reward_std, rewards/<fn>/mean, frac_reward_zero_std, kl and kl_penalty
    (beta > 0), completions/mean_length, completions/clipped_ratio, entropy, clip_ratio/*."""

    kl_in_loss = False

    @property
    def needs_old_logps(self) -> bool:
        """The sampling policy's logprobs: for the KL in the reward (beta > 0) and the ratio of later updates."""
        return self.needs_reference or self.config.num_iterations > 1

    def advantages(self, rewards: dict, labels: torch.Tensor, old_logps: torch.Tensor | None,
                   ref_logps: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        """Leave-one-out advantages of the rewards shaped by each completion's summed KL (``labels [N, T]`` mark
        its tokens); ``kl`` is logged as the token mean of ``L_old - L_ref``."""
        cfg = self.config
        sequence_kl, kl = None, None
        if ref_logps is not None:
            mask, token_kl = labels != IGNORE_INDEX, old_logps - ref_logps
            sequence_kl, kl = masked_sum(token_kl, mask, dim=-1), masked_mean(token_kl, mask)
        advantages, metrics = rloo_advantages(
            rewards, num_generations=self.num_generations, reward_weights=cfg.reward_weights,
            sequence_kl=sequence_kl, beta=cfg.effective_beta, reward_clip_range=cfg.reward_clip_range,
            normalize_advantages=cfg.normalize_advantages, device=self.device)
        if kl is not None:
            metrics["kl"] = kl
        return advantages, metrics

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        cfg = self.config
        weight, bias = self.head()
        loss, metrics = fused_linear_rloo_loss(
            self.hidden(batch), weight, batch["labels"], batch["advantages"], bias=bias,
            old_logps=batch.get("old_logps"), epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
            temperature=cfg.temperature, softcap=self.softcap, backend=cfg.kernel_backend,
        )
        return loss, {**float_metrics(loss, metrics), **batch["rollout_metrics"]}
