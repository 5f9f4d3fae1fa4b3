"""KTO on unpaired desirable / undesirable completions: against a detached KL baseline, APO's zero anchor or
BCO's running reward shift."""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from .checks import check_choice, check_range, check_same_shape, check_tensor
from .sequence import RunningMean, global_sum_and_count

# kto: against the mismatched-pair KL baseline; apo_zero_unpaired: APO's zero anchor, no baseline (as TRL's KTO);
# bco: TRL's BCOTrainer (Jung et al. 2024) without its density-ratio weights, against a running mean of the rewards.
KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired", "bco")


def check_kto_balance(
    num_desirable: int, num_undesirable: int, desirable_weight: float = 1.0, undesirable_weight: float = 1.0
) -> None:
    """Warn when ``wD * nD / (wU * nU)`` lies outside ``[1, 4/3]``, the range the KTO paper recommends."""
    if num_undesirable == 0 or num_desirable == 0:
        warnings.warn(f"KTO data has {num_desirable} desirable and {num_undesirable} undesirable examples; "
                      "it needs both", stacklevel=2)
        return
    ratio = desirable_weight * num_desirable / (undesirable_weight * num_undesirable)
    if not 1.0 <= ratio <= 4.0 / 3.0:
        warnings.warn(
            f"KTO: desirable_weight * n_desirable / (undesirable_weight * n_undesirable) = {ratio:.3f} is outside "
            f"[1, 4/3]; set desirable_weight / undesirable_weight to bring it into range",
            stacklevel=2,
        )


def kto_kl_estimate(kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """Detached scalar ``max(0, mean(L(y'|x) - R(y'|x)))`` over mismatched pairs, averaged across ranks."""
    total, count = global_sum_and_count(kl_logps.float() - ref_kl_logps.float())
    return (total / count).clamp(min=0.0)


def kto_loss(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    kl_logps: torch.Tensor | None,
    ref_kl_logps: torch.Tensor | None,
    desirable: torch.Tensor,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    loss_type: str = "kto",
    bco_running_mean: RunningMean | None = None,
):
    """Per-example KTO losses.

    Args:
        logps, ref_logps: summed completion logprobs ``[B]`` of the policy and the reference.
        kl_logps, ref_kl_logps: the same for mismatched pairs ``[B]`` (each prompt with another
            example's completion, e.g. rotated by one); they form the KL baseline, no gradient.
            ``apo_zero_unpaired`` and ``bco`` take None for both.
        desirable: ``[B]`` bool, True for desirable completions. With ``kto`` B must be at least 2.
        loss_type: ``kto``, or ``apo_zero_unpaired`` (APO's zero anchor on unpaired data, as TRL):
            ``wD * (1 - sig(b * d))`` for desirable rows and ``wU * sig(b * d)`` for undesirable ones; or ``bco``
            (binary classifier optimisation on unpaired data, as TRL's BCOTrainer): the running mean ``delta`` of every
            training reward so far (``bco_running_mean``, this batch's rewards folded in first) shifts the rewards,
            desirable rows lose ``-wD * log sig(b * d - delta)`` and undesirable ones ``-wU * log sig(delta - b * d)``
            (the weights default to 1, TRL's BCO has none).
        bco_running_mean: ``bco``'s running mean, updated in place (a fresh one when None: delta is then this
            batch's mean reward).

    Returns:
        ``(losses [B], rewards = b * (L - R) [B] detached, baseline)`` where with ``kto`` desirable rows lose
        ``wD * (1 - sig(b * (d - kl)))`` and undesirable rows ``wU * (1 - sig(b * (kl - d)))``. ``baseline`` is the
        detached scalar the rewards are compared with: the KL estimate (``kto``), delta (``bco``), or None.
    """
    check_choice("loss_type", loss_type, KTO_LOSS_TYPES)
    check_tensor("logps", logps, dims=1)
    if loss_type == "kto" and logps.shape[0] < 2:
        raise ValueError(f"logps: KTO needs a batch of at least 2 (the KL baseline pairs mismatched examples), "
                         f"got batch size {logps.shape[0]}")
    if (kl_logps is None or ref_kl_logps is None) != (loss_type != "kto"):
        raise ValueError(f"kl_logps: loss_type kto needs kl_logps and ref_kl_logps, {KTO_LOSS_TYPES[1:]} neither")
    if bco_running_mean is not None and loss_type != "bco":
        raise ValueError(f"bco_running_mean: only loss_type bco shifts its rewards by a running mean, got {loss_type}")
    check_same_shape("logps", logps, ref_logps=ref_logps, kl_logps=kl_logps, ref_kl_logps=ref_kl_logps,
                     desirable=desirable)
    if desirable.dtype != torch.bool:
        raise ValueError(f"desirable: expected a bool tensor, got {desirable.dtype}")
    check_range("beta", beta, 0.0, low_open=True)
    check_range("desirable_weight", desirable_weight, 0.0)
    check_range("undesirable_weight", undesirable_weight, 0.0)
    delta = logps.float() - ref_logps.float()
    if loss_type == "apo_zero_unpaired":
        chosen_losses = desirable_weight * (1.0 - torch.sigmoid(beta * delta))
        rejected_losses = undesirable_weight * torch.sigmoid(beta * delta)
        return torch.where(desirable, chosen_losses, rejected_losses), (beta * delta).detach(), None
    if loss_type == "bco":
        rewards = beta * delta
        running = bco_running_mean if bco_running_mean is not None else RunningMean()
        shift = rewards.new_tensor(running.update(rewards.detach()))
        chosen_losses = -desirable_weight * F.logsigmoid(rewards - shift)
        rejected_losses = -undesirable_weight * F.logsigmoid(shift - rewards)
        return torch.where(desirable, chosen_losses, rejected_losses), rewards.detach(), shift
    kl = kto_kl_estimate(kl_logps, ref_kl_logps)
    chosen_losses = desirable_weight * (1.0 - torch.sigmoid(beta * (delta - kl)))
    rejected_losses = undesirable_weight * (1.0 - torch.sigmoid(beta * (kl - delta)))
    losses = torch.where(desirable, chosen_losses, rejected_losses)
    return losses, (beta * delta).detach(), kl


def kto_metrics(
    rewards: torch.Tensor, logps: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """Detached means: kl (unless None), rewards/{chosen,rejected,margins}, logps/{chosen,rejected}.

    ``chosen`` means desirable rows and ``rejected`` undesirable ones; a side with no rows in
    the batch has no entries (and then there is no margin).
    """
    metrics = {} if kl is None else {"kl": kl.detach().float()}
    for side, rows in (("chosen", desirable), ("rejected", ~desirable)):
        if rows.any():
            metrics[f"rewards/{side}"] = rewards.detach().float()[rows].mean()
            metrics[f"logps/{side}"] = logps.detach().float()[rows].mean()
    if "rewards/chosen" in metrics and "rewards/rejected" in metrics:
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return metrics
