"""One-call preference losses from hidden states and the lm_head weight: DPO, CPO, SimPO, ORPO, KTO.

Pairwise wrappers take ``hidden [2B, T, H]`` with the B chosen rows first and the B
rejected rows after them, and ``labels [2B, T]`` already shifted (position t holds
token t+1; prompt and padding are ``ignore_index``). Sequence logprobs are sums over
completion tokens; NLL terms are the token mean over chosen completion tokens.
``softcap`` (``s * tanh(z / s)`` on the logits, e.g. Gemma-2's final softcapping) applies
to the policy and the reference alike.
No ``[tokens, vocab]`` tensor is built: everything comes from the fused kernels.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..cross_entropy import linear_cross_entropy
from ..logprobs import linear_logprobs
from .checks import check_choice, check_lengths, check_range
from .dpo import dpo_loss
from .fused_common import check_hidden_labels, frozen_token_logps, reference_token_logps
from .kto import KTO_LOSS_TYPES, kto_loss, kto_metrics
from .preference import cpo_loss, orpo_loss, preference_metrics, simpo_loss
from .sequence import RunningMean, completion_mask, masked_mean, pairwise_sequence_logps, sequence_logps


class PairwisePolicy(NamedTuple):
    """The policy side of a pairwise batch: sequence logps and lengths ``[B]`` each, the chosen NLL, metrics,
    and WPO's pair weights ``[B]`` (None unless asked for)."""

    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    chosen_lengths: torch.Tensor
    rejected_lengths: torch.Tensor
    nll: torch.Tensor
    metrics: dict[str, torch.Tensor]
    weights: torch.Tensor | None = None


def _num_pairs(hidden: torch.Tensor, labels: torch.Tensor) -> int:
    check_hidden_labels(hidden, labels)
    rows = hidden.shape[0]
    if rows == 0 or rows % 2:
        raise ValueError(f"hidden: expected chosen rows then rejected rows stacked along dim 0 (an even, non-zero "
                         f"batch 2B), got {rows} rows")
    return rows // 2


def pairwise_policy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    ignore_index: int = -100,
    backend: str = "auto",
    use_weighting: bool = False,
    ld_alpha: float | None = None,
) -> PairwisePolicy:
    """Policy sequence logps, lengths and chosen NLL of a ``[2B, T]`` pairwise batch in one kernel pass.

    With ``use_weighting``, also WPO's pair weights (Zhou et al. 2024, eq. 2, as TRL's DPO ``use_weighting``):
    ``min(1, exp(a_chosen + a_rejected))`` where ``a`` is a row's mean over completion tokens of
    ``logp(token) - log sum_v p_v**2``; no gradient.

    With ``ld_alpha``, the sequence logps are LD-DPO's (see ``pairwise_sequence_logps``).

    Metrics: logits/{chosen,rejected} (mean logit over vocabulary and completion tokens), nll_loss, and with
    ``use_weighting`` policy_weights (the mean pair weight).
    """
    pairs = _num_pairs(hidden, labels)
    nll_tokens, mean_logit, *log_sum_p_sq = linear_cross_entropy(
        hidden, weight, labels, bias=bias, softcap=softcap, ignore_index=ignore_index, reduction="none",
        return_mean_logit=True, return_log_sum_p_sq=use_weighting, backend=backend)
    mask = completion_mask(labels, ignore_index)
    lengths = mask.sum(-1)
    check_lengths("labels", lengths)
    logps = pairwise_sequence_logps(-nll_tokens, mask, ld_alpha)
    nll = masked_mean(nll_tokens[:pairs], mask[:pairs])
    mean_logit = mean_logit.detach()
    metrics = {
        "logits/chosen": masked_mean(mean_logit[:pairs], mask[:pairs]),
        "logits/rejected": masked_mean(mean_logit[pairs:], mask[pairs:]),
        "nll_loss": nll.detach(),
    }
    weights = None
    if use_weighting:
        adjusted = masked_mean(-nll_tokens.detach() - log_sum_p_sq[0], mask, dim=-1)
        weights = torch.exp(adjusted[:pairs] + adjusted[pairs:]).clamp(max=1.0)
        metrics["policy_weights"] = weights.mean()
    return PairwisePolicy(logps[:pairs], logps[pairs:], lengths[:pairs], lengths[pairs:], nll, metrics, weights)


def _average_logps(policy: PairwisePolicy) -> tuple[torch.Tensor, torch.Tensor]:
    """Length-averaged chosen and rejected logps ``[B]`` (the quantities SimPO and ORPO compare)."""
    return policy.chosen_logps / policy.chosen_lengths, policy.rejected_logps / policy.rejected_lengths


def _pairwise_result(losses, chosen_rewards, rejected_rewards, policy: PairwisePolicy, nll_alpha: float,
                     chosen_logps: torch.Tensor, rejected_logps: torch.Tensor):
    """``mean(losses) + nll_alpha * NLL_chosen`` and the DPO-family metrics."""
    loss = losses.mean()
    if nll_alpha:
        loss = loss + nll_alpha * policy.nll
    metrics = preference_metrics(chosen_rewards, rejected_rewards, chosen_logps, rejected_logps)
    metrics.update(policy.metrics)
    return loss, metrics


def fused_linear_dpo_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    ref_hidden: torch.Tensor | None = None,
    ref_weight: torch.Tensor | None = None,
    ref_bias: torch.Tensor | None = None,
    beta: float = 0.1,
    loss_type: str | Sequence[str] = "sigmoid",
    loss_weights: Sequence[float] | None = None,
    label_smoothing: float = 0.0,
    rpo_alpha: float = 1.0,
    discopop_tau: float = 0.05,
    bco_running_mean: RunningMean | None = None,
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 1.0,
    use_weighting: bool = False,
    ld_alpha: float | None = None,
    softcap: float | None = None,
    ignore_index: int = -100,
    backend: str = "auto",
):
    """DPO (any ``loss_type`` of ``dpo_loss``) plus ``rpo_alpha *`` chosen NLL (RPO; 0 gives pure DPO).

    Args:
        hidden ``[2B, T, H]`` (chosen rows, then rejected), weight ``[V, H]``, labels ``[2B, T]``, bias ``[V]``.
        The reference: ``ref_chosen_logps`` and ``ref_rejected_logps`` ``[B]`` (summed), or
            ``ref_hidden [2B, T, H]`` run through ``ref_weight`` / ``ref_bias`` (default: the policy head)
            under no_grad.
        loss_type: one type, or several whose losses are summed with ``loss_weights`` (default 1 each; MPO,
            TRL's multi-loss form); the type ``sft`` stands for the chosen NLL (the term ``rpo_alpha`` also
            adds). Each type appears once.
        beta, label_smoothing, discopop_tau, bco_running_mean, f_divergence_type, f_alpha_divergence_coef: as in
            ``dpo_loss``.
        use_weighting: WPO: each pair's loss (the weighted loss types, ``sft`` included) times its pair weight
            (see ``pairwise_policy``); the ``rpo_alpha`` term is not weighted (as TRL).
        ld_alpha: LD-DPO: the policy's and the reference's sequence logps weigh each pair's tokens beyond the
            shorter reply's length by ``ld_alpha`` (see ``pairwise_sequence_logps``; as TRL, precomputed
            reference logps must have been summed the same way). None: plain sums.

    Returns:
        ``(loss scalar fp32, metrics)``: rewards/{chosen,rejected,accuracies,margins}, logps/{chosen,rejected},
        logits/{chosen,rejected}, nll_loss, and with ``use_weighting`` policy_weights.
    """
    check_range("rpo_alpha", rpo_alpha, 0.0)
    terms, nll_weight = _weighted_loss_types(loss_type, loss_weights)
    if ld_alpha is not None:
        check_range("ld_alpha", ld_alpha, 0.0, 1.0)
    policy = pairwise_policy(hidden, weight, labels, bias=bias, softcap=softcap, ignore_index=ignore_index,
                             backend=backend, use_weighting=use_weighting, ld_alpha=ld_alpha)
    if ref_hidden is not None:
        if ref_chosen_logps is not None or ref_rejected_logps is not None:
            raise ValueError("ref_hidden: give either ref_hidden or ref_chosen_logps/ref_rejected_logps, not both")
        token_ref = reference_token_logps(ref_hidden, labels, ref_weight=ref_weight, ref_bias=ref_bias, weight=weight,
                                          bias=bias, softcap=softcap, ignore_index=ignore_index, backend=backend)
        ref_logps = pairwise_sequence_logps(token_ref, completion_mask(labels, ignore_index), ld_alpha)
        ref_chosen_logps, ref_rejected_logps = ref_logps.chunk(2)
    elif ref_chosen_logps is None or ref_rejected_logps is None:
        raise ValueError("ref_chosen_logps: DPO needs the reference: give ref_chosen_logps and ref_rejected_logps, "
                         "or ref_hidden")
    losses = nll_weight * policy.nll
    for term, term_weight in terms:  # the rewards (beta * log ratios) are the same for every type
        term_losses, chosen_rewards, rejected_rewards = dpo_loss(
            policy.chosen_logps, policy.rejected_logps, ref_chosen_logps.detach(), ref_rejected_logps.detach(),
            beta=beta, loss_type=term, label_smoothing=label_smoothing, chosen_lengths=policy.chosen_lengths,
            rejected_lengths=policy.rejected_lengths, discopop_tau=discopop_tau, bco_running_mean=bco_running_mean,
            f_divergence_type=f_divergence_type, f_alpha_divergence_coef=f_alpha_divergence_coef,
        )
        losses = losses + term_weight * term_losses
    if policy.weights is not None:
        losses = losses * policy.weights
    return _pairwise_result(losses, chosen_rewards, rejected_rewards, policy, rpo_alpha,
                            policy.chosen_logps, policy.rejected_logps)


def _weighted_loss_types(loss_type: str | Sequence[str], loss_weights: Sequence[float] | None
                         ) -> tuple[list[tuple[str, float]], float]:
    """``([(dpo loss type, weight), ...], weight of the sft term)`` of ``fused_linear_dpo_loss``'s arguments."""
    types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    weights = [1.0] * len(types) if loss_weights is None else [float(w) for w in loss_weights]
    if len(weights) != len(types):
        raise ValueError(f"loss_weights: expected one weight per loss type ({len(types)}), got {len(weights)}")
    if len(set(types)) != len(types):
        raise ValueError(f"loss_type: each type may appear once, got {types}")
    for w in weights:
        check_range("loss_weights", w, 0.0)
    terms = [(t, w) for t, w in zip(types, weights) if t != "sft"]
    if not terms:
        raise ValueError("loss_type: expected at least one preference loss type besides sft")
    return terms, sum(w for t, w in zip(types, weights) if t == "sft")


def fused_linear_cpo_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    cpo_alpha: float = 1.0,
    loss_type: str = "sigmoid",
    alpha: float = 0.0,
    softcap: float | None = None,
    ignore_index: int = -100,
    backend: str = "auto",
):
    """CPO: ``cpo_loss`` (any ``loss_type``; ``alpha``: AlphaPO's reward shape) plus ``cpo_alpha *`` chosen NLL;
    no reference model.

    Inputs as ``fused_linear_dpo_loss``. Returns ``(loss, metrics)`` with the same metric names; logps/* are the
    logps the loss compares (length-averaged for ``ipo``, summed otherwise).
    """
    check_range("cpo_alpha", cpo_alpha, 0.0)
    policy = pairwise_policy(hidden, weight, labels, bias=bias, softcap=softcap, ignore_index=ignore_index,
                             backend=backend)
    losses, chosen_rewards, rejected_rewards = cpo_loss(
        policy.chosen_logps, policy.rejected_logps, beta=beta, label_smoothing=label_smoothing, loss_type=loss_type,
        alpha=alpha, chosen_lengths=policy.chosen_lengths, rejected_lengths=policy.rejected_lengths)
    logps = _average_logps(policy) if loss_type == "ipo" else (policy.chosen_logps, policy.rejected_logps)
    return _pairwise_result(losses, chosen_rewards, rejected_rewards, policy, cpo_alpha, *logps)


def fused_linear_simpo_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    beta: float = 2.0,
    simpo_gamma: float = 1.0,
    label_smoothing: float = 0.0,
    cpo_alpha: float = 1.0,
    alpha: float = 0.0,
    softcap: float | None = None,
    ignore_index: int = -100,
    backend: str = "auto",
):
    """SimPO: ``simpo_loss`` on length-averaged logps plus ``cpo_alpha *`` chosen NLL (0: original SimPO);
    ``alpha`` != 0 makes it AlphaPO (with ``cpo_alpha: 0``, as TRL's ``loss_type: alphapo``).

    Inputs as ``fused_linear_dpo_loss``. Returns ``(loss, metrics)``; logps/* are the averaged logps.
    """
    check_range("cpo_alpha", cpo_alpha, 0.0)
    policy = pairwise_policy(hidden, weight, labels, bias=bias, softcap=softcap, ignore_index=ignore_index,
                             backend=backend)
    losses, chosen_rewards, rejected_rewards = simpo_loss(
        policy.chosen_logps, policy.rejected_logps, chosen_lengths=policy.chosen_lengths,
        rejected_lengths=policy.rejected_lengths, beta=beta, gamma=simpo_gamma, label_smoothing=label_smoothing,
        alpha=alpha)
    return _pairwise_result(losses, chosen_rewards, rejected_rewards, policy, cpo_alpha, *_average_logps(policy))


def fused_linear_orpo_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    beta: float = 0.1,
    softcap: float | None = None,
    ignore_index: int = -100,
    backend: str = "auto",
):
    """ORPO: chosen NLL ``- beta * logsig(log_odds)`` on length-averaged logps (``beta`` is ORPO's lambda).

    Inputs as ``fused_linear_dpo_loss``. Returns ``(loss, metrics)`` with the DPO-family names (logps/* are
    averaged logps) plus log_odds_ratio (mean ``logsig(log_odds)``) and log_odds_chosen (mean log_odds).
    """
    policy = pairwise_policy(hidden, weight, labels, bias=bias, softcap=softcap, ignore_index=ignore_index,
                             backend=backend)
    losses, chosen_rewards, rejected_rewards, log_odds = orpo_loss(
        policy.chosen_logps, policy.rejected_logps, chosen_lengths=policy.chosen_lengths,
        rejected_lengths=policy.rejected_lengths, beta=beta)
    loss, metrics = _pairwise_result(losses, chosen_rewards, rejected_rewards, policy, 1.0, *_average_logps(policy))
    metrics["log_odds_ratio"] = F.logsigmoid(log_odds).mean()
    metrics["log_odds_chosen"] = log_odds.mean()
    return loss, metrics


def fused_linear_kto_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    desirable: torch.Tensor,
    *,
    kl_hidden: torch.Tensor | None = None,
    kl_labels: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    ref_logps: torch.Tensor | None = None,
    ref_kl_logps: torch.Tensor | None = None,
    ref_hidden: torch.Tensor | None = None,
    ref_kl_hidden: torch.Tensor | None = None,
    ref_weight: torch.Tensor | None = None,
    ref_bias: torch.Tensor | None = None,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    loss_type: str = "kto",
    bco_running_mean: RunningMean | None = None,
    softcap: float | None = None,
    ignore_index: int = -100,
    backend: str = "auto",
):
    """KTO from hidden states: ``mean(kto_loss)``, with the mismatched-pair KL baseline for ``loss_type`` kto.

    Args:
        hidden ``[B, T, H]`` and labels ``[B, T]``: each prompt with its own completion; desirable ``[B]`` bool.
        kl_hidden ``[B, T', H]`` and kl_labels ``[B, T']``: each prompt with a mismatched completion
            (e.g. rotated by one); run under no_grad. ``kto`` only.
        The reference: ``ref_logps`` (and for kto ``ref_kl_logps``) ``[B]`` (summed), or ``ref_hidden`` (and
            ``ref_kl_hidden``) through ``ref_weight`` / ``ref_bias`` (default: the policy head).
        loss_type, bco_running_mean: ``kto``, ``apo_zero_unpaired`` or ``bco`` with its running mean (see
            ``kto_loss``).

    Returns:
        ``(loss scalar fp32, metrics)``: kl (kto only), delta (bco only), rewards/{chosen,rejected,margins},
        logps/{chosen,rejected} (chosen = desirable rows; a side absent from the batch is absent from the metrics).
    """
    check_choice("loss_type", loss_type, KTO_LOSS_TYPES)
    check_hidden_labels(hidden, labels)
    mask = completion_mask(labels, ignore_index)
    check_lengths("labels", mask.sum(-1))
    logps = sequence_logps(linear_logprobs(hidden, weight, labels, bias=bias, softcap=softcap,
                                           ignore_index=ignore_index, backend=backend), mask)
    head = dict(ref_weight=ref_weight, ref_bias=ref_bias, weight=weight, bias=bias, softcap=softcap,
                ignore_index=ignore_index, backend=backend)
    ref_logps = _reference_sequence_logps(ref_logps, ref_hidden, labels, mask, ("ref_hidden", "ref_logps"), head)
    kl_logps = None
    if loss_type == "kto":
        if kl_hidden is None or kl_labels is None:
            raise ValueError("kl_hidden: loss_type kto needs the mismatched pairs: give kl_hidden and kl_labels")
        check_hidden_labels(kl_hidden, kl_labels, hidden_name="kl_hidden", labels_name="kl_labels")
        kl_mask = completion_mask(kl_labels, ignore_index)
        kl_logps = sequence_logps(frozen_token_logps(kl_hidden, weight, kl_labels, bias=bias, temperature=1.0,
                                                     softcap=softcap, ignore_index=ignore_index, backend=backend),
                                  kl_mask)
        ref_kl_logps = _reference_sequence_logps(ref_kl_logps, ref_kl_hidden, kl_labels, kl_mask,
                                                 ("ref_kl_hidden", "ref_kl_logps"), head)
    elif any(x is not None for x in (kl_hidden, kl_labels, ref_kl_hidden, ref_kl_logps)):
        raise ValueError(f"kl_hidden: loss_type {loss_type} has no KL baseline; leave out the kl_* inputs")
    losses, rewards, baseline = kto_loss(logps, ref_logps.detach(), kl_logps,
                                         None if ref_kl_logps is None else ref_kl_logps.detach(), desirable,
                                         beta=beta, desirable_weight=desirable_weight,
                                         undesirable_weight=undesirable_weight, loss_type=loss_type,
                                         bco_running_mean=bco_running_mean)
    metrics = kto_metrics(rewards, logps, desirable, baseline if loss_type == "kto" else None)
    if loss_type == "bco":
        metrics["delta"] = baseline
    return losses.mean(), metrics


def _reference_sequence_logps(given, ref_hidden, labels, mask, names, head) -> torch.Tensor:
    """KTO's summed reference logps ``[B]``: ``given``, or computed from ``ref_hidden`` (``names``: the hidden
    argument's name, then the logps argument's)."""
    hidden_name, logps_name = names
    if ref_hidden is None:
        if given is None:
            raise ValueError(f"{logps_name}: KTO needs the reference: give {logps_name} or {hidden_name}")
        return given
    if given is not None:
        raise ValueError(f"{hidden_name}: give either {hidden_name} or {logps_name}, not both")
    return sequence_logps(reference_token_logps(ref_hidden, labels, hidden_name=hidden_name, **head), mask)
