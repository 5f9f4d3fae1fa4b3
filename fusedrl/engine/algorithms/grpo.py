"""GRPO (``rl: grpo``): group-relative advantages from reward functions / a reward model, clipped token loss.

One round: the prompts of ``gradient_accumulation_steps`` micro-batches are sampled
``num_generations`` times each, scored, and turned into advantages; the rollout is
then used for ``num_iterations`` optimizer updates, each over all its micro-batches
(``micro_batch_size`` prompts x ``num_generations`` completions apiece). With one
iteration the policy has not moved since sampling, so ``rho = 1`` exactly and the
old logprobs are not recomputed; with more, they are taken once from the sampling
policy before the first update.
"""
from __future__ import annotations

import torch

from ...kernels.losses import fused_linear_grpo_loss, grpo_advantages
from ...kernels.losses.sequence import global_sum_and_count
from ..data import IGNORE_INDEX
from .base import as_floats, float_metrics
from .online import OnlineAlgorithm, select_rows


class GRPO(OnlineAlgorithm):
    """``rl: grpo``. Metrics: reward, reward_std, rewards/<fn>/mean, frac_reward_zero_std,
    completions/mean_length, completions/clipped_ratio, kl (beta > 0), entropy, clip_ratio/*."""

    progress_keys = ("loss", "reward", "kl")
    plot_keys = ("reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "kl", "entropy",
                 "clip_ratio/region_mean", "loss")
    summary_keys = ("reward", "reward_std", "completions/mean_length", "completions/clipped_ratio")

    kl_in_loss = True  # the reference's token logprobs go to the loss (RLOO puts its KL in the reward instead)

    @property
    def needs_reference(self) -> bool:
        """A reference model only for the KL term: ``beta: 0`` loads none."""
        return self.config.effective_beta > 0

    @property
    def needs_old_logps(self) -> bool:
        """The sampling policy's token logprobs are taken only when the policy moves before its last update."""
        return self.config.num_iterations > 1

    @property
    def num_generations(self) -> int:
        """Completions per prompt: ``num_generations_eval`` (when set) for held-out rollouts (model in eval mode)."""
        cfg = self.config
        if cfg.num_generations_eval is not None and not self.model.training:
            return cfg.num_generations_eval
        return cfg.effective_num_generations

    @property
    def updates_per_round(self) -> int:
        return self.config.num_iterations

    def updates(self, batches: list[dict]) -> list[list[dict]]:
        """Sample and score one rollout of ``batches``; return ``num_iterations`` updates over its micro-batches."""
        cfg = self.config
        sampled = self.sample(batches)
        rollout, sequences = sampled.rollout, sampled.sequences
        if cfg.mask_truncated_completions:
            sequences["labels"] = sequences["labels"].masked_fill(rollout.truncated[:, None], IGNORE_INDEX)
        rewards = self.rewards(sampled)
        old_logps = self.policy_logps(sequences) if self.needs_old_logps else None
        ref_logps = self.reference_logps(sequences) if self.needs_reference else None
        advantages, metrics = self.advantages(rewards, sequences["labels"], old_logps, ref_logps)
        metrics.update(rollout.length_metrics())
        tensors = {**sequences, "advantages": advantages}
        if cfg.num_iterations > 1:
            tensors["old_logps"] = old_logps
        if self.kl_in_loss and ref_logps is not None:
            tensors["ref_logps"] = ref_logps
        rows = torch.arange(rollout.rows, device=self.device).split(cfg.micro_batch_size * self.num_generations)
        shared = {"rollout_metrics": as_floats(metrics),
                  "num_items_in_batch": tokens_per_micro_batch(sequences["labels"], len(rows))}
        micro_batches = [{**select_rows(tensors, index), **shared} for index in rows]
        self.remember(sampled, lambda row: _note(rewards, advantages, row))
        return [micro_batches] * cfg.num_iterations

    def advantages(self, rewards: dict, labels: torch.Tensor, old_logps: torch.Tensor | None,
                   ref_logps: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        """``(advantages [N], rollout metrics)`` of the rollout's per-source ``rewards`` (``labels``, ``old_logps``
        and ``ref_logps`` ``[N, T]`` are there for the algorithms whose rewards read them)."""
        cfg = self.config
        return grpo_advantages(rewards, num_generations=self.num_generations, reward_weights=cfg.reward_weights,
                               scale_rewards=cfg.scale_rewards,
                               multi_objective_aggregation=cfg.multi_objective_aggregation, device=self.device)

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        cfg = self.config
        weight, bias = self.head()
        loss, metrics = fused_linear_grpo_loss(
            self.hidden(batch), weight, batch["labels"], batch["advantages"], bias=bias,
            old_logps=batch.get("old_logps"), ref_logps=batch.get("ref_logps"), beta=cfg.effective_beta,
            epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high, delta=cfg.delta,
            importance_sampling_level=cfg.importance_sampling_level, loss_type=cfg.effective_loss_type,
            max_completion_length=cfg.max_completion_length, num_items_in_batch=batch["num_items_in_batch"],
            top_entropy_quantile=cfg.top_entropy_quantile, sapo_temperature_pos=cfg.sapo_temperature_pos,
            sapo_temperature_neg=cfg.sapo_temperature_neg, vespo_k_pos=cfg.vespo_k_pos,
            vespo_lambda_pos=cfg.vespo_lambda_pos, vespo_k_neg=cfg.vespo_k_neg, vespo_lambda_neg=cfg.vespo_lambda_neg,
            off_policy_mask_threshold=cfg.off_policy_mask_threshold,
            use_bias_correction_kl=cfg.use_bias_correction_kl, temperature=cfg.temperature, softcap=self.softcap,
            backend=cfg.kernel_backend,
        )
        return loss, {**float_metrics(loss, metrics), **batch["rollout_metrics"]}


def tokens_per_micro_batch(labels: torch.Tensor, micro_batches: int) -> float:
    """``num_items_in_batch`` of each micro-batch of a rollout with ``labels [N, T]``: the completion tokens of
    the global batch (every data-parallel rank's) over the micro-batches of all ranks. The trainer weighs the
    ``micro_batches x ranks`` micro-batch losses equally (rows), so ``dapo`` sums to Σ / global tokens."""
    total, ranks = global_sum_and_count((labels != IGNORE_INDEX).sum())
    return float(total.clamp(min=1)) / (micro_batches * float(ranks))


def _note(rewards: dict, advantages: torch.Tensor, row: int) -> str:
    """``accuracy=1, format=None, advantage=0.71``: what row ``row`` scored."""
    values = [f"{name}={'None' if v[row] is None else f'{float(v[row]):.4g}'}" for name, v in rewards.items()]
    return ", ".join(values + [f"advantage={float(advantages[row]):.3g}"])
