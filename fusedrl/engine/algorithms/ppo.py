"""PPO (``rl: ppo``): policy, frozen reference, frozen reward model and a trained value model.

The trainable module is ``PolicyWithValue`` (models.py): the policy and the value
model (initialised from ``reward_model``) side by side, so the trainer's optimizer,
gradient clipping and checkpoints cover both. One round: the prompts of
``gradient_accumulation_steps x num_mini_batches`` micro-batches get one completion
each; the rollout is scored once (old logprobs, reference logprobs, values, reward-model
scores -> KL-penalised per-token rewards -> GAE); then ``num_ppo_epochs`` passes over
a fresh permutation, each cut into ``num_mini_batches`` optimizer updates of
``gradient_accumulation_steps`` micro-batches (``micro_batch_size`` rows apiece).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ...kernels.losses import fused_linear_ppo_loss, gae_advantages, ppo_rewards
from ..data import IGNORE_INDEX
from ..models import VALUE_MODEL_FOLDER, PolicyWithValue, enable_activation_checkpointing
from .base import as_floats, float_metrics
from .online import OnlineAlgorithm, select_rows


class PPO(OnlineAlgorithm):
    """``rl: ppo``. Metrics: objective/{kl, entropy, non_score_reward, rlhf_reward, scores}, policy/approxkl_avg,
    policy/clipfrac_avg, loss/policy_avg, loss/value_avg, val/clipfrac_avg."""

    needs_reference = True
    progress_keys = ("loss", "objective/scores", "objective/kl")
    plot_keys = ("objective/scores", "objective/rlhf_reward", "objective/kl", "objective/entropy",
                 "loss/policy_avg", "loss/value_avg", "policy/clipfrac_avg", "val/clipfrac_avg")
    summary_keys = ("objective/scores", "objective/rlhf_reward", "objective/kl", "loss/value_avg")

    def build_model(self) -> PolicyWithValue:
        """The policy (LoRA-wrapped when asked) and a trainable value model loaded from ``reward_model``."""
        return PolicyWithValue(super().build_model(), self.load_reward_model(trainable=True))

    @property
    def policy(self):
        return self.model.policy

    @property
    def batches_per_round(self) -> int:
        return self.config.gradient_accumulation_steps * self.config.num_mini_batches

    @property
    def updates_per_round(self) -> int:
        return self.config.num_ppo_epochs * self.config.num_mini_batches

    def evaluation_batches(self, batch: dict) -> list[dict]:
        """The first epoch's mini-batches of the held-out rollout: each row once."""
        updates = self.updates([batch])
        return [micro_batch for update in updates[:len(updates) // self.config.num_ppo_epochs]
                for micro_batch in update]

    def updates(self, batches: list[dict]) -> list[list[dict]]:
        """Sample and score one rollout of ``batches``; return its ``num_ppo_epochs x num_mini_batches`` updates."""
        cfg = self.config
        sampled = self.sample(batches)
        sequences = sampled.sequences
        mask = sequences["labels"] != IGNORE_INDEX
        logps, ref_logps = self.policy_logps(sequences), self.reference_logps(sequences)
        values = self.token_values(self.model.value, sequences)
        scores = self.eos_penalised(self.reward_model_scores(sequences), sampled.rollout)
        rewards, metrics = ppo_rewards(scores, logps, ref_logps, mask, kl_coef=cfg.kl_coef,
                                       kl_estimator=cfg.kl_estimator)
        advantages, returns = gae_advantages(rewards, values, mask, gamma=cfg.gamma, lam=cfg.lam,
                                             whiten_rewards=cfg.whiten_rewards)
        tensors = {**sequences, "old_logps": logps, "old_values": values, "advantages": advantages,
                   "returns": returns}
        shared = {"rollout_metrics": as_floats(metrics)}
        self.remember(sampled, lambda row: f"score={float(scores[row]):.4g}")
        updates = []
        for _ in range(cfg.num_ppo_epochs):
            order = torch.randperm(sampled.rollout.rows, device=self.device)
            for mini_batch in order.tensor_split(cfg.num_mini_batches):
                if len(mini_batch):
                    updates.append([{**select_rows(tensors, index), **shared}
                                    for index in mini_batch.split(cfg.micro_batch_size)])
        return updates

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        cfg = self.config
        weight, bias = self.head()
        values = self.model.value.token_values(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
        loss, metrics = fused_linear_ppo_loss(
            self.hidden(batch), weight, batch["labels"], old_logps=batch["old_logps"],
            advantages=batch["advantages"], values=values, old_values=batch["old_values"], returns=batch["returns"],
            bias=bias, cliprange=cfg.cliprange, cliprange_value=cfg.cliprange_value, vf_coef=cfg.vf_coef,
            temperature=cfg.temperature, softcap=self.softcap, backend=cfg.kernel_backend,
        )
        return loss, {**float_metrics(loss, metrics), **batch["rollout_metrics"]}

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in the backward, in the policy and in the value model."""
        super().enable_gradient_checkpointing()
        enable_activation_checkpointing(self.model.value.backbone)

    def save_final(self, folder: Path, model: PolicyWithValue) -> None:
        """The policy as ``Algorithm.save_final`` writes it, and the value model in ``folder/value_model``."""
        super().save_final(folder, model.policy)
        model.value.save_pretrained(str(folder / VALUE_MODEL_FOLDER))
