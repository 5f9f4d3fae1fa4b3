"""DPO and its loss variants on sequence logprobs.

Notation: ``dc = Lc - Rc`` and ``dr = Lr - Rr`` (policy minus reference summed
logprobs), ``h = dc - dr``, ``b = beta``, ``eps = label_smoothing``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .checks import check_choice, check_lengths, check_pair, check_range
from .preference import check_label_smoothing, length_normalised, pairwise_sigmoid_loss
from .sequence import global_sum_and_count

DPO_LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "robust", "exo_pair", "nca_pair", "bco_pair",
    "sppo_hard", "apo_zero", "apo_down", "discopop", "sigmoid_norm",
)
SMOOTHED_LOSS_TYPES = ("sigmoid", "robust", "exo_pair")
LENGTH_NORMALISED_LOSS_TYPES = ("ipo", "sigmoid_norm")
EXO_DEFAULT_EPSILON = 1e-3


class RunningMean:
    """Mean of every value passed to ``update`` so far, across ranks: BCO's reward shift ``delta``."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0.0

    @property
    def mean(self) -> float:
        """The running mean (0 before the first update)."""
        return self.total / self.count if self.count else 0.0

    def update(self, values: torch.Tensor) -> float:
        """Fold ``values`` (any shape, detached) into the mean and return the new mean."""
        total, count = global_sum_and_count(values)
        self.total += total.item()
        self.count += count.item()
        return self.mean

    def state_dict(self) -> dict[str, float]:
        """The state to checkpoint."""
        return {"total": self.total, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore a state from ``state_dict``."""
        self.total, self.count = float(state["total"]), float(state["count"])


def _variant_losses(loss_type, dc, dr, beta, eps, discopop_tau, delta):
    """Per-pair losses of one variant from the (possibly length-normalised) log ratios ``dc, dr``."""
    z = beta * (dc - dr)
    if loss_type in ("sigmoid", "sigmoid_norm"):
        return pairwise_sigmoid_loss(z, eps)
    if loss_type == "hinge":
        return F.relu(1.0 - z)
    if loss_type == "ipo":
        return (dc - dr - 1.0 / (2.0 * beta)).square()
    if loss_type == "robust":
        return (-(1.0 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1.0 - 2.0 * eps)
    if loss_type == "exo_pair":
        eps = eps or EXO_DEFAULT_EPSILON
        return (torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps))
                + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(eps)))
    if loss_type == "nca_pair":
        return -F.logsigmoid(beta * dc) - 0.5 * F.logsigmoid(-beta * dc) - 0.5 * F.logsigmoid(-beta * dr)
    if loss_type == "bco_pair":
        return -F.logsigmoid(beta * dc - delta) - F.logsigmoid(-(beta * dr - delta))
    if loss_type == "sppo_hard":
        return (dc - 1.0 / (2.0 * beta)).square() + (dr + 1.0 / (2.0 * beta)).square()
    if loss_type == "apo_zero":
        return (1.0 - torch.sigmoid(beta * dc)) + torch.sigmoid(beta * dr)
    if loss_type == "apo_down":
        return torch.sigmoid(beta * dc) + (1.0 - torch.sigmoid(z))
    # discopop: logistic and exponential losses blended by m = sigmoid(z / tau); m * e^-z in log space.
    m = torch.sigmoid(z / discopop_tau)
    return -F.logsigmoid(z) * (1.0 - m) + torch.exp(F.logsigmoid(z / discopop_tau) - z)


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    discopop_tau: float = 0.05,
    bco_running_mean: RunningMean | None = None,
):
    """Per-pair DPO losses for any ``loss_type`` in ``DPO_LOSS_TYPES``.

    Args:
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps: summed
            completion logprobs ``[B]`` of the policy and the reference.
        label_smoothing: ``eps`` in ``[0, 0.5)``, used by sigmoid, robust and exo_pair
            (exo_pair uses 1e-3 when 0); any other loss_type requires 0.
        chosen_lengths, rejected_lengths: completion tokens ``[B]`` (> 0), required by the
            length-normalised types ipo and sigmoid_norm (``dc / |yc| - dr / |yr|``).
        discopop_tau: the temperature of discopop's blend.
        bco_running_mean: bco_pair's running mean of the rewards, updated with this batch's
            rewards before use; without one, ``delta`` is this batch's mean reward.

    Returns:
        ``(losses [B] fp32, chosen_rewards = b * dc [B], rejected_rewards = b * dr [B])``, rewards detached.
    """
    check_choice("loss_type", loss_type, DPO_LOSS_TYPES)
    check_pair("chosen_logps", chosen_logps, rejected_logps=rejected_logps, ref_chosen_logps=ref_chosen_logps,
               ref_rejected_logps=ref_rejected_logps, chosen_lengths=chosen_lengths,
               rejected_lengths=rejected_lengths)
    check_range("beta", beta, 0.0, low_open=True)
    check_label_smoothing(label_smoothing)
    if label_smoothing and loss_type not in SMOOTHED_LOSS_TYPES:
        raise ValueError(
            f"label_smoothing: only loss_type in {SMOOTHED_LOSS_TYPES} use it; expected 0 for {loss_type!r}, "
            f"got {label_smoothing!r}"
        )
    check_range("discopop_tau", discopop_tau, 0.0, low_open=True)
    for name, lengths in (("chosen_lengths", chosen_lengths), ("rejected_lengths", rejected_lengths)):
        if lengths is not None:
            check_lengths(name, lengths)
    dc = chosen_logps.float() - ref_chosen_logps.float()
    dr = rejected_logps.float() - ref_rejected_logps.float()
    chosen_rewards, rejected_rewards = (beta * dc).detach(), (beta * dr).detach()
    delta = 0.0
    if loss_type == "bco_pair":
        running = bco_running_mean if bco_running_mean is not None else RunningMean()
        delta = running.update(torch.cat([chosen_rewards, rejected_rewards]))
    if loss_type in LENGTH_NORMALISED_LOSS_TYPES:
        dc = length_normalised("chosen_lengths", dc, chosen_lengths)
        dr = length_normalised("rejected_lengths", dr, rejected_lengths)
    losses = _variant_losses(loss_type, dc, dr, beta, label_smoothing, discopop_tau, delta)
    return losses, chosen_rewards, rejected_rewards
