"""Knowledge distillation from top-k teacher logprobs (``rl: kd``): stored by ``fusedrl kd-extract``, or
computed in each step from a live teacher (``kd_teacher``)."""
from __future__ import annotations

import torch

from ...kernels.losses import fused_linear_topk_kd_loss
from ..kd_extract import read_metadata, teacher_topk, vocab_fingerprint
from ..models import load_tokenizer
from .base import Algorithm, float_metrics


class KD(Algorithm):
    """``kd_alpha * T^2 * KD + kd_ce_alpha * CE`` over positions with teacher targets.

    With ``kd_teacher`` the data is plain SFT rows and each batch gets the teacher's top-``kd_top_k`` of
    every completion position at ``kd_generation_temperature`` (what ``kd-extract`` would have stored)."""

    token_mean_loss = True
    progress_keys = ("loss", "kd_loss")
    plot_keys = ("loss", "kd_loss", "ce_loss")
    summary_keys = ("loss", "kd_loss", "ce_loss")

    def __init__(self, config, device):
        super().__init__(config, device)
        self.teacher = self._build_teacher() if config.kd_teacher else None

    @property
    def data_kind(self) -> str:
        return "sft" if self.config.kd_teacher else "kd"

    def _build_teacher(self):
        """The frozen ``kd_teacher``, refused unless its tokenizer has the student's vocabulary."""
        cfg = self.config
        tokenizer = load_tokenizer(cfg.kd_teacher, trust_remote_code=cfg.trust_remote_code, key="kd_teacher")
        if vocab_fingerprint(tokenizer) != vocab_fingerprint(self.tokenizer):
            raise ValueError(f"kd_teacher: {cfg.kd_teacher}'s tokenizer (vocab {vocab_fingerprint(tokenizer)}) differs "
                             f"from the student's (vocab {vocab_fingerprint(self.tokenizer)}): KD needs the same "
                             f"vocabulary")
        return self.load_frozen(cfg.kd_teacher, "kd_teacher")

    def models(self) -> list[torch.nn.Module]:
        """The student and the live teacher (``compile`` and ``shard`` act on both)."""
        return [m for m in (self.model, self.teacher) if m is not None]

    def prepare_data(self, data):
        """Refuse targets from ``kd-extract`` made with another tokenizer or another temperature, and any such
        targets when a live ``kd_teacher`` makes its own."""
        for entry in self.config.datasets + self.config.test_datasets:
            meta = read_metadata(entry["path"])
            if meta is None:
                continue
            if self.teacher is not None:
                raise ValueError(f"datasets: {entry['path']} holds extracted teacher targets; with kd_teacher the "
                                 f"data is plain SFT rows (remove kd_teacher to train on the stored targets)")
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

    def teacher_targets(self, batch: dict) -> dict[str, torch.Tensor]:
        """``target_token_ids``, ``target_logprobs`` ``[B, T, kd_top_k]`` and ``target_mask`` ``[B, T]`` of
        ``batch`` from the live teacher, aligned with its labels (the completion positions)."""
        cfg = self.config
        logprobs, ids = teacher_topk(self.teacher, batch["input_ids"], batch["attention_mask"], cfg.kd_top_k,
                                     cfg.kd_generation_temperature, cfg.kernel_backend, batch.get("position_ids"))
        return {"target_token_ids": ids, "target_logprobs": logprobs, "target_mask": batch["labels"] != -100}

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        cfg = self.config
        if self.teacher is not None:
            batch = {**batch, **self.teacher_targets(batch)}
        weight, bias = self.head()
        loss, metrics = fused_linear_topk_kd_loss(
            self.hidden(batch), weight, batch["labels"], batch["target_token_ids"], batch["target_logprobs"],
            target_mask=batch["target_mask"], bias=bias, kd_temperature=cfg.kd_temperature,
            teacher_temperature=cfg.kd_generation_temperature, divergence=cfg.kd_divergence, kd_beta=cfg.kd_beta,
            kd_normalize_topk=cfg.kd_normalize_topk, kd_alpha=cfg.kd_alpha, kd_ce_alpha=cfg.kd_ce_alpha,
            softcap=self.softcap, backend=cfg.kernel_backend,
        )
        return loss, float_metrics(loss, metrics)
