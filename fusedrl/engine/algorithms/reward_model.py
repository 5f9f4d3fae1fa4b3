"""Reward modelling: a scalar value head on a causal LM backbone, trained with the Bradley-Terry loss."""
from __future__ import annotations

from pathlib import Path

import torch

from ...kernels.losses import reward_model_loss
from ..models import RewardModel, enable_activation_checkpointing
from .base import Algorithm
from .preference import Pairwise


class ValueHeadModelling(Algorithm):
    """What the reward models share: the trained module is a ``RewardModel`` (the base causal LM, LoRA-wrapped
    when asked, under a scalar value head), saved as the backbone's files plus ``value_head.safetensors``."""

    def build_model(self):
        """The ``RewardModel``; its value head is ``base_model``'s ``value_head.safetensors`` when the folder has
        one (a trained reward model, evaluated or trained on), else a new one (``init_value_head``)."""
        model = RewardModel(super().build_model())
        if self.on_meta or not model.load_value_head(self.config.base_model):
            self.init_value_head(model.value_head)
        return model

    def init_value_head(self, head: torch.nn.Linear) -> None:
        """A new value head's initialisation: ``RewardModel``'s own."""

    def enable_gradient_checkpointing(self) -> None:
        enable_activation_checkpointing(self.model.backbone)

    def save_final(self, folder: Path, model) -> None:
        """``model`` (a ``RewardModel``): the backbone's Hugging Face files and ``value_head.safetensors``."""
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))


class RewardModelling(ValueHeadModelling, Pairwise):
    """``rl: rm``: Bradley-Terry loss on the value head's score at each reply's last non-pad token."""

    plot_keys = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")
    progress_keys = ("loss", "rewards/accuracies")

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
