"""Reward modelling: Bradley-Terry loss on a scalar value head read at the last non-pad token."""
from __future__ import annotations

from pathlib import Path

import torch

from ...kernels.losses import reward_model_loss
from ..models import RewardModel, enable_activation_checkpointing
from .preference import Pairwise


class RewardModelling(Pairwise):
    """``rl: rm``. Saves the backbone plus ``value_head.safetensors``."""

    plot_keys = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")
    progress_keys = ("loss", "rewards/accuracies")

    def build_model(self):
        """The base causal LM (LoRA-wrapped when asked) under a scalar value head."""
        return RewardModel(super().build_model())

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        scores = self.model(batch["input_ids"], batch["attention_mask"])
        pairs = scores.shape[0] // 2
        losses, chosen, rejected = reward_model_loss(
            scores[:pairs], scores[pairs:], margin=batch.get("margin"),
            center_rewards_coefficient=self.config.center_rewards_coefficient,
        )
        loss = losses.mean()
        metrics = {"loss": loss.item(), "rewards/chosen": chosen.mean().item(),
                   "rewards/rejected": rejected.mean().item(),
                   "rewards/accuracies": (chosen > rejected).float().mean().item(),
                   "rewards/margins": (chosen - rejected).mean().item()}
        return loss, metrics

    def enable_gradient_checkpointing(self) -> None:
        enable_activation_checkpointing(self.model.backbone)

    def save_final(self, folder: Path, model) -> None:
        """``model`` (a ``RewardModel``): the backbone's Hugging Face files and ``value_head.safetensors``."""
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))
