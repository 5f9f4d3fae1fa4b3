"""Knowledge distillation from stored top-k teacher logprobs (``rl: kd``)."""
from __future__ import annotations

import torch

from ...kernels.losses import fused_linear_topk_kd_loss
from ..kd_extract import read_metadata, vocab_fingerprint
from .base import Algorithm, float_metrics


class KD(Algorithm):
    """``kd_alpha * T^2 * KD + kd_ce_alpha * CE`` over positions with teacher targets."""

    data_kind = "kd"
    token_mean_loss = True
    progress_keys = ("loss", "kd_loss")
    plot_keys = ("loss", "kd_loss", "ce_loss")
    summary_keys = ("loss", "kd_loss", "ce_loss")

    def prepare_data(self, data):
        """Refuse targets from ``kd-extract`` made with another tokenizer or another temperature."""
        for entry in self.config.datasets + self.config.test_datasets:
            meta = read_metadata(entry["path"])
            if meta is None:
                continue
            if meta["vocab_fingerprint"] != vocab_fingerprint(self.tokenizer):
                raise ValueError(
                    f"datasets: {entry['path']} holds targets of teacher {meta['teacher']!r} whose tokenizer "
                    f"({meta['tokenizer']}, vocab {meta['vocab_fingerprint']}) differs from the student's "
                    f"({self.tokenizer.name_or_path}, vocab {vocab_fingerprint(self.tokenizer)}): KD needs the same "
                    f"vocabulary")
            if meta["temperature"] != self.config.kd_generation_temperature:
                raise ValueError(
                    f"kd_generation_temperature: {entry['path']} was extracted at temperature {meta['temperature']}, "
                    f"set kd_generation_temperature: {meta['temperature']}")
        return data

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        cfg = self.config
        weight, bias = self.head()
        loss, metrics = fused_linear_topk_kd_loss(
            self.hidden(batch), weight, batch["labels"], batch["target_token_ids"], batch["target_logprobs"],
            target_mask=batch["target_mask"], bias=bias, kd_temperature=cfg.kd_temperature,
            teacher_temperature=cfg.kd_generation_temperature, divergence=cfg.kd_divergence, kd_beta=cfg.kd_beta,
            kd_normalize_topk=cfg.kd_normalize_topk, kd_alpha=cfg.kd_alpha, kd_ce_alpha=cfg.kd_ce_alpha,
            softcap=self.softcap, backend=cfg.kernel_backend,
        )
        return loss, float_metrics(loss, metrics)
