"""Supervised fine-tuning: token-mean cross-entropy on completion tokens through the fused kernel."""
from __future__ import annotations

import torch

from ...kernels import linear_cross_entropy
from .base import Algorithm


class SFT(Algorithm):
    """``rl: sft``. Metrics: loss, mean_token_accuracy, num_tokens (label tokens of the step, all ranks)."""

    data_kind = "sft"
    token_mean_loss = True
    progress_keys = ("loss", "mean_token_accuracy")
    plot_keys = ("loss", "mean_token_accuracy")
    summary_keys = ("loss", "mean_token_accuracy")
    summed_keys = ("num_tokens",)

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        weight, bias = self.head()
        labels = batch["labels"]
        loss, accuracy = linear_cross_entropy(
            self.hidden(batch), weight, labels, bias=bias, label_smoothing=self.config.label_smoothing,
            z_loss=self.config.z_loss, softcap=self.softcap, return_accuracy=True, backend=self.config.kernel_backend,
        )
        tokens = (labels != -100).sum()
        metrics = {"loss": loss.item(), "mean_token_accuracy": (accuracy.sum() / tokens.clamp(min=1)).item(),
                   "num_tokens": float(tokens)}
        return loss, metrics
