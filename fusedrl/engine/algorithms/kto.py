"""KTO on unpaired (prompt, completion, desirable) rows: the mismatched-pair KL baseline (``loss_type: kto``), APO's
zero anchor (``apo_zero_unpaired``) or BCO's running reward shift (``bco``)."""
from __future__ import annotations

import torch

from ...kernels.losses import RunningMean, check_kto_balance, fused_linear_kto_loss
from .base import Algorithm, float_metrics
from .reward_shift import RunningRewardShift


class KTO(RunningRewardShift, Algorithm):
    """``rl: kto``. Batches carry ``kto_label`` and the rotated ``kl_*`` rows for the KL estimate (read by
    ``loss_type: kto`` only)."""

    data_kind = "kto"
    needs_reference = True
    progress_keys = ("loss", "kl", "rewards/margins")
    plot_keys = ("loss", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins")
    summary_keys = ("loss", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins")

    def __init__(self, config, device):
        super().__init__(config, device)
        self.bco_running_mean = RunningMean() if config.effective_loss_type == "bco" else None

    @property
    def min_batch_rows(self) -> int:
        """KTO's KL baseline pairs each row with another row's completion: two rows at least; the other loss
        types take single rows."""
        return 2 if self.config.effective_loss_type == "kto" else 1

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        cfg = self.config
        weight, bias = self.head()
        ref_hidden, ref_weight, ref_bias = self.reference_forward(batch)
        baseline = {}
        if cfg.effective_loss_type == "kto":  # the mismatched pairs' KL; apo_zero_unpaired and bco have none
            with torch.no_grad():
                kl_hidden = self.hidden(batch, "kl_")
            baseline = dict(kl_hidden=kl_hidden, kl_labels=batch["kl_labels"],
                            ref_kl_hidden=self.reference_forward(batch, "kl_")[0])
        loss, metrics = fused_linear_kto_loss(
            self.hidden(batch), weight, batch["labels"], batch["kto_label"], bias=bias, ref_hidden=ref_hidden,
            ref_weight=ref_weight, ref_bias=ref_bias, beta=cfg.effective_beta,
            desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight,
            loss_type=cfg.effective_loss_type, bco_running_mean=self.bco_mean_for_this_call(), softcap=self.softcap,
            backend=cfg.kernel_backend, **baseline,
        )
        return loss, float_metrics(loss, metrics)

    def prepare_data(self, data):
        """Warn when the weighted desirable:undesirable ratio of the training rows is outside [1, 4/3]."""
        labels = data.train["label"]
        desirable = sum(bool(x) for x in labels)
        check_kto_balance(desirable, len(labels) - desirable, self.config.desirable_weight,
                          self.config.undesirable_weight)
        return data
