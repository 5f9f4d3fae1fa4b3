"""Pairwise preference methods on stacked chosen/rejected batches: DPO (and IPO, RPO), CPO, SimPO, ORPO."""
from __future__ import annotations

import gc
import logging

import torch

from ...kernels.losses import (RunningMean, fused_linear_cpo_loss, fused_linear_dpo_loss, fused_linear_orpo_loss,
                               fused_linear_simpo_loss)
from ..distributed import Ranks
from ..reference_cache import add_reference_logps, collate_with_columns
from ..sharding import shard, shard_sizes
from ..training_data import TrainingData
from .base import Algorithm, float_metrics
from .reward_shift import RunningRewardShift

log = logging.getLogger(__name__)


class Pairwise(Algorithm):
    """Shared pieces: chosen rows first, rejected rows second in every batch."""

    data_kind = "pairwise"
    progress_keys = ("loss", "rewards/accuracies", "rewards/margins")
    plot_keys = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "nll_loss")
    summary_keys = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")

    def batch_rows(self, batch: dict) -> int:
        return int(batch["input_ids"].shape[0]) // 2

    def common_kwargs(self) -> dict:
        weight, bias = self.head()
        return {"weight": weight, "bias": bias, "softcap": self.softcap, "backend": self.config.kernel_backend}


class DPO(RunningRewardShift, Pairwise):
    """``rl: dpo`` (any ``loss_type``; RPO through ``rpo_alpha``) and ``rl: ipo`` (loss_type ipo)."""

    needs_reference = True

    def __init__(self, config, device):
        super().__init__(config, device)
        self.bco_running_mean = RunningMean() if "bco_pair" in config.dpo_loss_types else None
        self.reference_root = None  # under fsdp, the precomputing reference's own sharded root

    def models(self) -> list[torch.nn.Module]:
        """The trained module and, unless only the ``precompute_ref_log_probs`` pass reads it, the reference."""
        return [self.model] if self.config.precompute_ref_log_probs else super().models()

    def shard(self, ranks: Ranks, compute_dtype: torch.dtype | None = None) -> None:
        """As ``Algorithm.shard``; a reference that only the ``precompute_ref_log_probs`` pass reads is sharded
        under a root of its own, which that pass then drops whole."""
        super().shard(ranks, compute_dtype)
        if self.config.precompute_ref_log_probs and self.reference is not None:
            self.reference_root = shard([self.reference], ranks, compute_dtype, from_rank0=True)
            local, whole = shard_sizes(self.reference_root)
            log.info("fsdp: the reference for precompute_ref_log_probs has a root of its own: each rank holds "
                     "%.4g MiB of its %.4g MiB until the pass is done, then none", local / 2**20, whole / 2**20)

    def prepare_data(self, data: TrainingData) -> TrainingData:
        """With ``precompute_ref_log_probs``, one reference pass over train and held-out rows before training
        (under fsdp through the reference's own sharded root); the reference model is released afterwards."""
        if not self.config.precompute_ref_log_probs:
            return data
        size = self.config.eval_batch_size or self.config.micro_batch_size
        run = self.reference_root if self.reference_root is not None else self.run
        train = run(add_reference_logps, self, data.train, data.collate, size)
        held_out = run(add_reference_logps, self, data.eval, data.collate, size) if len(data.eval) else data.eval
        self.reference = self.reference_root = None  # every batch now carries its reference logps (as TRL)
        gc.collect()  # FSDP's hooks make reference cycles: free the shards now
        return TrainingData(train, held_out, collate_with_columns(data.collate))

    @property
    def nll_weight(self) -> float:
        """The chosen-NLL (RPO) term's weight: ``rpo_alpha`` (null or 0: none)."""
        return self.config.rpo_alpha or 0.0

    def reference_kwargs(self, batch: dict) -> dict:
        """Precomputed reference logps when the batch has them, else the reference model's hidden states."""
        if "ref_chosen_logps" in batch:
            return {"ref_chosen_logps": batch["ref_chosen_logps"], "ref_rejected_logps": batch["ref_rejected_logps"]}
        ref_hidden, ref_weight, ref_bias = self.reference_forward(batch)
        return {"ref_hidden": ref_hidden, "ref_weight": ref_weight, "ref_bias": ref_bias}

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        cfg = self.config
        loss, metrics = fused_linear_dpo_loss(
            self.hidden(batch), labels=batch["labels"], **self.common_kwargs(), **self.reference_kwargs(batch),
            beta=cfg.effective_beta, loss_type=cfg.effective_loss_type, loss_weights=cfg.loss_weights,
            label_smoothing=cfg.label_smoothing, use_weighting=cfg.use_weighting, ld_alpha=cfg.ld_alpha,
            f_divergence_type=cfg.f_divergence_type, f_alpha_divergence_coef=cfg.f_alpha_divergence_coef,
            rpo_alpha=self.nll_weight, bco_running_mean=self.bco_mean_for_this_call(),
        )
        return loss, float_metrics(loss, metrics)


class CPO(Pairwise):
    """``rl: cpo`` (``loss_type`` sigmoid, hinge or ipo): no reference model."""

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        cfg = self.config
        loss, metrics = fused_linear_cpo_loss(self.hidden(batch), labels=batch["labels"], **self.common_kwargs(),
                                              beta=cfg.effective_beta, label_smoothing=cfg.label_smoothing,
                                              cpo_alpha=cfg.cpo_alpha, loss_type=cfg.effective_loss_type,
                                              alpha=cfg.alpha)
        return loss, float_metrics(loss, metrics)


class SimPO(Pairwise):
    """``rl: simpo``: length-averaged logps, margin ``simpo_gamma``, no reference model; AlphaPO with ``alpha``."""

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        cfg = self.config
        loss, metrics = fused_linear_simpo_loss(self.hidden(batch), labels=batch["labels"], **self.common_kwargs(),
                                                beta=cfg.effective_beta, simpo_gamma=cfg.simpo_gamma,
                                                label_smoothing=cfg.label_smoothing, cpo_alpha=cfg.cpo_alpha,
                                                alpha=cfg.alpha)
        return loss, float_metrics(loss, metrics)


class ORPO(Pairwise):
    """``rl: orpo``: NLL plus the odds-ratio term weighted by ``beta`` (alias ``orpo_alpha``)."""

    plot_keys = Pairwise.plot_keys + ("log_odds_ratio", "log_odds_chosen")

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        loss, metrics = fused_linear_orpo_loss(self.hidden(batch), labels=batch["labels"], **self.common_kwargs(),
                                               beta=self.config.effective_beta)
        return loss, float_metrics(loss, metrics)
