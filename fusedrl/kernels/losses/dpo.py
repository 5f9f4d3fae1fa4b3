"""DPO and its loss variants on sequence logprobs.

Notation: ``dc = Lc - Rc`` and ``dr = Lr - Rr`` (policy minus reference summed
logprobs), ``h = dc - dr``, ``b = beta``, ``eps = label_smoothing``. Under an
f-divergence other than reverse KL (f-DPO), the variants read the scores
``sc = f'(e^dc)`` and ``sr = f'(e^dr)`` where they read ``dc`` and ``dr``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .checks import check_choice, check_lengths, check_pair, check_range
from .preference import check_label_smoothing, length_normalised, pairwise_sigmoid_loss
from .sequence import RunningMean

DPO_LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "robust", "exo_pair", "nca_pair", "bco_pair",
    "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm",
)
SMOOTHED_LOSS_TYPES = ("sigmoid", "robust", "exo_pair", "aot", "aot_unpaired")
LENGTH_NORMALISED_LOSS_TYPES = ("ipo", "sigmoid_norm")
# Variants that compare log ratios only, so an f-divergence has nothing to change in them.
LOG_RATIO_LOSS_TYPES = ("aot", "aot_unpaired", "apo_zero")
F_DIVERGENCE_TYPES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
EXO_DEFAULT_EPSILON = 1e-3
EXP_CAP = 80.0  # the f-divergence scores' exponents are capped here (e^80 is finite in fp32)


def f_divergence_scores(log_ratios: torch.Tensor, f_divergence_type: str, alpha: float = 1.0) -> torch.Tensor:
    """f-DPO's score ``f'(u)`` of each log ratio ``log u`` (constants dropped; TRL's ``f_divergence_type``).

    reverse_kl: ``log u`` (DPO); forward_kl: ``-1/u``; js_divergence: ``log(u / (1 + u))``; alpha_divergence:
    ``u**(alpha - 1) / (alpha - 1)`` (TRL's convention; the f-DPO paper's alpha is ``1 - alpha``; alpha = 1 is
    reverse_kl). Exponents are capped at 80.
    """
    check_choice("f_divergence_type", f_divergence_type, F_DIVERGENCE_TYPES)
    if f_divergence_type == "forward_kl":
        return -torch.exp((-log_ratios).clamp(max=EXP_CAP))
    if f_divergence_type == "js_divergence":
        return F.logsigmoid(log_ratios)
    if f_divergence_type == "alpha_divergence" and alpha != 1.0:
        return torch.exp(((alpha - 1.0) * log_ratios).clamp(max=EXP_CAP)) / (alpha - 1.0)
    return log_ratios


def _sorted_pair_losses(loss_type, chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps,
                        beta, eps):
    """AOT (Melnyk et al. 2024): the sigmoid loss on sorted quantiles of the batch. ``aot`` pairs the sorted
    policy log-odds ``Lc - Lr`` with the sorted reference ones; ``aot_unpaired`` the sorted ``dc`` with the
    sorted ``dr``. Each pair's loss depends on the whole batch (micro-batch)."""
    if loss_type == "aot":
        policy, reference = chosen_logps - rejected_logps, ref_chosen_logps - ref_rejected_logps
    else:
        policy, reference = chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps
    z = beta * (torch.sort(policy).values - torch.sort(reference).values)
    return pairwise_sigmoid_loss(z, eps)


def _variant_losses(loss_type, sc, sr, dc, dr, beta, eps, discopop_tau, delta):
    """Per-pair losses of one variant from the (possibly length-normalised) scores ``sc, sr`` and, for the APO
    anchors, the log ratios ``dc, dr`` themselves."""
    z = beta * (sc - sr)
    if loss_type in ("sigmoid", "sigmoid_norm"):
        return pairwise_sigmoid_loss(z, eps)
    if loss_type == "hinge":
        return F.relu(1.0 - z)
    if loss_type == "ipo":
        return (sc - sr - 1.0 / (2.0 * beta)).square()
    if loss_type == "robust":
        return (-(1.0 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1.0 - 2.0 * eps)
    if loss_type == "exo_pair":
        eps = eps or EXO_DEFAULT_EPSILON
        return (torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps))
                + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(eps)))
    if loss_type == "nca_pair":
        return -F.logsigmoid(beta * sc) - 0.5 * F.logsigmoid(-beta * sc) - 0.5 * F.logsigmoid(-beta * sr)
    if loss_type == "bco_pair":
        return -F.logsigmoid(beta * sc - delta) - F.logsigmoid(-(beta * sr - delta))
    if loss_type == "sppo_hard":
        return (sc - 1.0 / (2.0 * beta)).square() + (sr + 1.0 / (2.0 * beta)).square()
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
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 1.0,
):
    """Per-pair DPO losses for any ``loss_type`` in ``DPO_LOSS_TYPES``.

    Args:
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps: summed
            completion logprobs ``[B]`` of the policy and the reference.
        label_smoothing: ``eps`` in ``[0, 0.5)``, used by sigmoid, robust, exo_pair, aot and aot_unpaired
            (exo_pair uses 1e-3 when 0); any other loss_type requires 0.
        chosen_lengths, rejected_lengths: completion tokens ``[B]`` (> 0), required by the
            length-normalised types ipo and sigmoid_norm (``dc / |yc| - dr / |yr|``).
        discopop_tau: the temperature of discopop's blend.
        bco_running_mean: bco_pair's running mean of the rewards, updated with this batch's
            rewards before use; without one, ``delta`` is this batch's mean reward.
        f_divergence_type, f_alpha_divergence_coef: f-DPO (see ``f_divergence_scores``); the loss types
            in ``LOG_RATIO_LOSS_TYPES`` do not read the scores and take reverse_kl only.

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
    check_choice("f_divergence_type", f_divergence_type, F_DIVERGENCE_TYPES)
    if f_divergence_type != "reverse_kl" and loss_type in LOG_RATIO_LOSS_TYPES:
        raise ValueError(f"f_divergence_type: loss_type {loss_type!r} compares log ratios only; expected "
                         f"reverse_kl, got {f_divergence_type!r}")
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
    if loss_type in ("aot", "aot_unpaired"):
        losses = _sorted_pair_losses(loss_type, chosen_logps.float(), rejected_logps.float(),
                                     ref_chosen_logps.float(), ref_rejected_logps.float(), beta, label_smoothing)
        return losses, chosen_rewards, rejected_rewards
    sc = f_divergence_scores(dc, f_divergence_type, f_alpha_divergence_coef)
    sr = f_divergence_scores(dr, f_divergence_type, f_alpha_divergence_coef)
    if loss_type in LENGTH_NORMALISED_LOSS_TYPES:
        sc = length_normalised("chosen_lengths", sc, chosen_lengths)
        sr = length_normalised("rejected_lengths", sr, rejected_lengths)
    losses = _variant_losses(loss_type, sc, sr, dc, dr, beta, label_smoothing, discopop_tau, delta)
    return losses, chosen_rewards, rejected_rewards
