"""Online DPO (``rl: online_dpo``; Guo et al. 2024, TRL's OnlineDPOTrainer).

One round: the policy samples two completions of every prompt of ``gradient_accumulation_steps``
micro-batches; the reward functions and/or the reward model score them (weighted by ``reward_weights``,
less ``missing_eos_penalty`` for a completion without EOS); the better one of each pair is chosen, the
other rejected, and one optimizer update takes the DPO loss (``loss_type`` sigmoid or ipo) of the pairs
against the reference, ``micro_batch_size`` pairs per micro-batch (chosen rows, then rejected rows, as
every pairwise batch).
"""
from __future__ import annotations

import torch

from ...kernels.losses.grpo import weighted_rewards
from .base import as_floats
from .online import OnlineAlgorithm, select_rows
from .preference import DPO


class OnlineDPO(OnlineAlgorithm, DPO):
    """``rl: online_dpo``: sampling and scoring from ``OnlineAlgorithm``, the loss from ``DPO`` (no NLL term).
    Metrics: DPO's rewards/*, logps/*, logits/*, and objective/scores, objective/scores_margin (chosen minus
    rejected score), val/contain_eos_token, completions/mean_length."""

    num_generations = 2
    nll_weight = 0.0
    progress_keys = ("loss", "objective/scores", "rewards/accuracies")
    plot_keys = ("loss", "objective/scores", "objective/scores_margin", "rewards/margins", "rewards/accuracies",
                 "completions/mean_length")
    summary_keys = ("objective/scores", "objective/scores_margin", "rewards/accuracies", "rewards/margins")

    def batch_rows(self, batch: dict) -> int:
        """Pairs of an update micro-batch, or prompts of a prompt batch."""
        return DPO.batch_rows(self, batch) if "input_ids" in batch else OnlineAlgorithm.batch_rows(self, batch)

    def updates(self, batches: list[dict]) -> list[list[dict]]:
        """Sample two completions per prompt, rank each pair by its score, and make one update of the pairs."""
        cfg = self.config
        sampled = self.sample(batches)
        rollout = sampled.rollout
        scores = self.eos_penalised(weighted_rewards(self.rewards(sampled), cfg.reward_weights, self.device)[0],
                                    rollout)
        first = torch.arange(0, rollout.rows, 2, device=self.device)
        first_wins = scores[first] >= scores[first + 1]
        chosen, rejected = torch.where(first_wins, first, first + 1), torch.where(first_wins, first + 1, first)
        metrics = as_floats({
            "objective/scores": scores.mean(), "objective/scores_margin": (scores[chosen] - scores[rejected]).mean(),
            "val/contain_eos_token": (~rollout.truncated).float().mean(), **rollout.length_metrics(),
        })
        is_chosen = torch.zeros(rollout.rows, dtype=torch.bool, device=self.device).index_fill(0, chosen, True)
        self.remember(sampled, lambda row: f"score={float(scores[row]):.4g} "
                                           f"({'chosen' if is_chosen[row] else 'rejected'})")
        pairs = torch.arange(len(chosen), device=self.device).split(cfg.micro_batch_size)
        return [[{**select_rows(sampled.sequences, torch.cat([chosen[i], rejected[i]])), "rollout_metrics": metrics}
                 for i in pairs]]

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        loss, metrics = DPO.loss(self, batch)
        return loss, {**metrics, **batch["rollout_metrics"]}
