"""Process reward modelling: a score for every step of a reply, trained on per-step correctness labels."""
from __future__ import annotations

import torch

from ...kernels.losses import process_reward_loss
from .reward_model import ValueHeadModelling


class ProcessRewardModelling(ValueHeadModelling):
    """``rl: prm`` (TRL's PRMTrainer): the value head's score at the last token of each step (its separator's)
    is the logit of that step being correct, trained with binary cross-entropy, a token mean over the steps.
    Metrics: loss, accuracy (steps whose score has the label's sign), num_steps (steps trained on, all ranks)."""

    data_kind = "stepwise"
    progress_keys = ("loss", "accuracy")
    plot_keys = ("loss", "accuracy")
    summary_keys = ("loss", "accuracy")
    summed_keys = ("num_steps",)

    def init_value_head(self, head: torch.nn.Linear) -> None:
        """A new head's weight starts at 0: every step's score starts at 0 (loss ln 2), so the first updates fit
        the head to the backbone's features instead of pushing the backbone to undo a random head
        (``configs/prm.yaml``: held-out accuracy 0.625 after 60 steps from a random head, 0.729 from zero; 0.618
        of the steps are correct)."""
        torch.nn.init.zeros_(head.weight)

    def trained_steps(self, batch: dict) -> torch.Tensor:
        """``[B, T]`` bool: the labelled steps, or while training with ``train_on_last_step_only`` each row's final
        step (none where truncation cut it off)."""
        if not (self.config.train_on_last_step_only and self.model.training):
            return batch["labels"] != -100
        positions = torch.arange(batch["labels"].shape[1], device=batch["labels"].device)
        return positions[None, :] == batch["last_step"][:, None]

    def batch_weight(self, batch: dict) -> float:
        """The steps trained on: the loss is their mean."""
        return float(self.trained_steps(batch).sum())

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        steps = self.trained_steps(batch)
        scores = self.model.token_values(batch["input_ids"], batch["attention_mask"])
        loss, accuracy = process_reward_loss(scores, batch["labels"], steps)
        return loss, {"loss": loss.item(), "accuracy": accuracy.item(), "num_steps": float(steps.sum())}
