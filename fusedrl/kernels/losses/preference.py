"""Pairwise preference losses without a reference model (CPO, SimPO, ORPO) and the reward-model loss.

Inputs are per-sequence tensors ``[B]``: summed completion logprobs (``L``) or reward
scores, plus completion lengths where a method averages. Each function returns
``(losses [B], chosen_rewards [B], rejected_rewards [B])`` (ORPO adds its log odds);
losses are fp32 and differentiable, rewards are detached.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_choice, check_lengths, check_pair, check_range

CPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo")


def check_label_smoothing(label_smoothing: float) -> None:
    """Raise unless the label smoothing ``eps`` lies in ``[0, 0.5)``."""
    check_range("label_smoothing", label_smoothing, 0.0, 0.5, high_open=True)


def length_normalised(name: str, logps: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """``logps / lengths`` in fp32 (the per-token average); ``lengths`` must be given and > 0."""
    if lengths is None:
        raise ValueError(f"{name}: required (completion tokens per sequence) for a length-normalised loss")
    check_lengths(name, lengths)
    return logps.float() / lengths.float()


def pairwise_sigmoid_loss(logits: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """``-(1 - eps) * logsigmoid(x) - eps * logsigmoid(-x)``: Bradley-Terry loss with label smoothing ``eps``."""
    loss = -F.logsigmoid(logits)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-logits)
    return loss


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate near 0 and for very negative ``x``.

    ``x`` is clamped to at most ``-1e-9`` (``log(1 - e^x) ~ -20.7`` there): an average logprob of exactly 0
    (every token certain) would otherwise give an infinite value and a NaN gradient."""
    x = x.clamp(max=-1e-9)
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def preference_metrics(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    chosen_logps: torch.Tensor | None = None,
    rejected_logps: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Detached batch means: rewards/{chosen,rejected,accuracies,margins} and, given logps, logps/{chosen,rejected}."""
    chosen_rewards, rejected_rewards = chosen_rewards.detach().float(), rejected_rewards.detach().float()
    metrics = {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
    }
    if chosen_logps is not None:
        metrics["logps/chosen"] = chosen_logps.detach().float().mean()
    if rejected_logps is not None:
        metrics["logps/rejected"] = rejected_logps.detach().float().mean()
    return metrics


def alphapo_rewards(logps: torch.Tensor, alpha: float) -> torch.Tensor:
    """AlphaPO's reward shape (Gupta et al. 2025; TRL's CPO ``alpha``): ``(1 - p^-alpha) / alpha`` with
    ``p = e^L``, i.e. ``-expm1(-alpha * L) / alpha``, of logps ``L [B]``, fp32: ``L`` itself at ``alpha = 0``
    (the log reward), ``p - 1`` (linear in ``p``) at ``alpha = -1``. ``e^(-alpha * L)`` grows fast with ``|L|``
    for ``alpha > 0``: the shape is meant for length-averaged logps (SimPO, CPO's ipo)."""
    logps = logps.float()
    if alpha == 0:
        return logps
    return -torch.expm1(-alpha * logps) / alpha


def cpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
    alpha: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
):
    """CPO's preference term on ``h = r_c - r_r``; no reference model. ``loss_type`` (TRL's CPO): ``sigmoid``
    ``-(1-eps) logsig(b h) - eps logsig(-b h)``, ``hinge`` ``relu(1 - b h)`` or ``ipo`` ``(h - 1/(2b))^2``
    (label smoothing only with sigmoid). ``r = alphapo_rewards(L, alpha)`` of the summed logps, or for ``ipo``
    of the length-averaged ones (as TRL's CPO and DPO's ipo); ``alpha = 0`` gives ``r = L``.

    Args: summed logps ``[B]`` each; completion lengths ``[B]`` (> 0), required by ``ipo``. The
    ``cpo_alpha * NLL`` term is added by the caller.
    Returns: ``(losses [B], b * r_c [B], b * r_r [B])``.
    """
    check_pair("chosen_logps", chosen_logps, rejected_logps=rejected_logps,
               chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    check_choice("loss_type", loss_type, CPO_LOSS_TYPES)
    check_range("beta", beta, 0.0, low_open=True)
    check_label_smoothing(label_smoothing)
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing: only loss_type sigmoid uses it; expected 0 for {loss_type!r}, "
                         f"got {label_smoothing!r}")
    if loss_type == "ipo":
        chosen_logps = length_normalised("chosen_lengths", chosen_logps, chosen_lengths)
        rejected_logps = length_normalised("rejected_lengths", rejected_logps, rejected_lengths)
    chosen, rejected = alphapo_rewards(chosen_logps, alpha), alphapo_rewards(rejected_logps, alpha)
    if loss_type == "hinge":
        losses = torch.relu(1.0 - beta * (chosen - rejected))
    elif loss_type == "ipo":
        losses = (chosen - rejected - 1.0 / (2.0 * beta)).square()
    else:
        losses = pairwise_sigmoid_loss(beta * (chosen - rejected), label_smoothing)
    return losses, (beta * chosen).detach(), (beta * rejected).detach()


def simpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    *,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float = 2.0,
    gamma: float = 1.0,
    label_smoothing: float = 0.0,
    alpha: float = 0.0,
):
    """SimPO: ``-logsig(b(r_c - r_r) - gamma)`` with label smoothing, ``r = alphapo_rewards(avg, alpha)`` of the
    length-averaged logps (``alpha = 0``: ``r = avg``, SimPO itself; otherwise AlphaPO).

    Args: summed logps ``[B]`` and completion lengths ``[B]`` (> 0). ``cpo_alpha * NLL`` is the caller's.
    Returns: ``(losses [B], b * r_c [B], b * r_r [B])``.
    """
    check_pair("chosen_logps", chosen_logps, rejected_logps=rejected_logps,
               chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    check_range("beta", beta, 0.0, low_open=True)
    check_range("gamma", gamma)
    check_label_smoothing(label_smoothing)
    chosen = alphapo_rewards(length_normalised("chosen_lengths", chosen_logps, chosen_lengths), alpha)
    rejected = alphapo_rewards(length_normalised("rejected_lengths", rejected_logps, rejected_lengths), alpha)
    losses = pairwise_sigmoid_loss(beta * (chosen - rejected) - gamma, label_smoothing)
    return losses, (beta * chosen).detach(), (beta * rejected).detach()


def orpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    *,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float = 0.1,
):
    """ORPO odds-ratio term ``-b * logsig(log_odds)`` on length-averaged logps ``lc, lr``.

    ``log_odds = (lc - lr) - (log(1 - e^lc) - log(1 - e^lr))``; ``b`` is ORPO's lambda
    (``orpo_alpha``). The chosen NLL is the caller's.
    Returns: ``(losses [B], b * lc [B], b * lr [B], log_odds [B] detached)``.
    """
    check_pair("chosen_logps", chosen_logps, rejected_logps=rejected_logps,
               chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    check_range("beta", beta, 0.0, low_open=True)
    chosen = length_normalised("chosen_lengths", chosen_logps, chosen_lengths)
    rejected = length_normalised("rejected_lengths", rejected_logps, rejected_lengths)
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
    losses = -beta * F.logsigmoid(log_odds)
    return losses, (beta * chosen).detach(), (beta * rejected).detach(), log_odds.detach()


def reward_model_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    *,
    margin: torch.Tensor | float | None = None,
    center_rewards_coefficient: float = 0.0,
):
    """Bradley-Terry reward-model loss ``-logsig(rc - rr - margin) + c * (rc + rr)^2``.

    Args: scalar-head scores ``[B]`` each; ``margin`` ``[B]`` or a float (default 0);
        ``c = center_rewards_coefficient`` >= 0.
    Returns: ``(losses [B], rc [B], rr [B])``, scores detached.
    """
    check_pair("chosen_rewards", chosen_rewards, rejected_rewards=rejected_rewards,
               margin=margin if isinstance(margin, torch.Tensor) else None)
    check_range("center_rewards_coefficient", center_rewards_coefficient, 0.0)
    chosen, rejected = chosen_rewards.float(), rejected_rewards.float()
    logits = chosen - rejected
    if margin is not None:
        logits = logits - (margin.float() if isinstance(margin, torch.Tensor) else margin)
    losses = -F.logsigmoid(logits)
    if center_rewards_coefficient:
        losses = losses + center_rewards_coefficient * (chosen + rejected).square()
    return losses, chosen.detach(), rejected.detach()
