"""The fused_linear_* wrappers against eager implementations written here from the formulas.

The eager side materialises full logits (hidden @ weight.T), takes log_softmax and gathers;
it never calls fusedrl's loss code. Values, metrics and gradients w.r.t. hidden and
weight are compared in fp32 and with bf16 inputs against an fp32 reference.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import FUSED_BACKENDS, assert_close, device, skip_unless_backend_runs
from fusedrl.kernels.losses import (
    DPO_LOSS_TYPES,
    KTO_LOSS_TYPES,
    fused_linear_cpo_loss,
    fused_linear_dpo_loss,
    fused_linear_grpo_loss,
    fused_linear_kto_loss,
    fused_linear_orpo_loss,
    fused_linear_ppo_loss,
    fused_linear_rloo_loss,
    fused_linear_simpo_loss,
    fused_linear_topk_kd_loss,
)
from fusedrl.kernels.losses.dpo import SMOOTHED_LOSS_TYPES

V, H, T = 97, 29, 7
PAIRS = 3
DTYPES = [torch.float32, torch.bfloat16]


# ----------------------------------------------------------------------------- inputs


def make_labels(rows, length=T, vocab=V):
    """Labels with 1-2 masked prompt tokens, 0-1 padding tokens at the end and one ignored token inside."""
    dev = device()
    labels = torch.randint(0, vocab, (rows, length), device=dev)
    pos = torch.arange(length, device=dev)
    prompt = torch.randint(1, 3, (rows, 1), device=dev)
    pad = torch.randint(0, 2, (rows, 1), device=dev)
    labels[(pos < prompt) | (pos >= length - pad)] = -100
    labels[0, length - 3] = -100
    return labels


def make_model(rows, length=T):
    """fp32 hidden ``[rows, length, H]`` and weight ``[V, H]`` (leaves are made per dtype by ``leaf``)."""
    hidden = torch.randn(rows, length, H, device=device())
    weight = torch.randn(V, H, device=device()) * 0.3
    return hidden, weight


def leaf(t, dtype):
    return t.detach().to(dtype).requires_grad_()


# ----------------------------------------------------------------------------- eager side


def eager_logits(hidden, weight, temperature=1.0, bias=None, softcap=None):
    logits = hidden.float() @ weight.float().T
    if bias is not None:
        logits = logits + bias.float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return logits / temperature


def eager_token_logps(hidden, weight, labels, temperature=1.0, **head):
    """Full-vocab log_softmax, gathered at the labels; 0 where ignored."""
    logsm = torch.log_softmax(eager_logits(hidden, weight, temperature, **head), dim=-1)
    picked = logsm.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return torch.where(labels != -100, picked, 0.0)


def eager_ld_weights(labels, ld_alpha):
    """LD-DPO's token weights ``[2B, T]``: 1 up to the pair's shorter reply, ``ld_alpha`` after (1 if None)."""
    mask = labels != -100
    if ld_alpha is None:
        return mask.float()
    b = labels.shape[0] // 2
    lengths = mask.sum(-1)
    shared = torch.minimum(lengths[:b], lengths[b:]).repeat(2)
    position = torch.cumsum(mask.long(), -1)
    return torch.where(position <= shared[:, None], 1.0, ld_alpha) * mask


def eager_pairs(hidden, weight, labels, ld_alpha=None, **head):
    """Summed/averaged chosen and rejected logps, chosen token-mean NLL and mean-logit metrics."""
    mask = labels != -100
    tok = eager_token_logps(hidden, weight, labels, **head)
    seq, lengths = (tok * eager_ld_weights(labels, ld_alpha)).sum(-1), mask.sum(-1).float()
    mean_logit = eager_logits(hidden, weight, **head).mean(-1).detach()
    b = labels.shape[0] // 2
    return dict(
        c=seq[:b], r=seq[b:], lc=lengths[:b], lr=lengths[b:],
        nll=-tok[:b][mask[:b]].mean(),
        logits_c=mean_logit[:b][mask[:b]].mean(), logits_r=mean_logit[b:][mask[b:]].mean(),
    )


def eager_pair_metrics(p, chosen_rewards, rejected_rewards, chosen_logps, rejected_logps):
    cr, rr = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "rewards/chosen": cr.mean(), "rewards/rejected": rr.mean(),
        "rewards/accuracies": (cr > rr).float().mean(), "rewards/margins": (cr - rr).mean(),
        "logps/chosen": chosen_logps.detach().mean(), "logps/rejected": rejected_logps.detach().mean(),
        "logits/chosen": p["logits_c"], "logits/rejected": p["logits_r"], "nll_loss": p["nll"].detach(),
    }


def eager_dpo_losses(loss_type, dc, dr, beta, eps, lc, lr, policy_odds=None, ref_odds=None):
    """Each DPO variant straight from the reference sheet; dc, dr are summed log ratios (or f-DPO scores);
    AOT also reads the policy's and the reference's log-odds ``Lc - Lr`` and ``Rc - Rr``."""
    ls = F.logsigmoid
    z = beta * (dc - dr)
    if loss_type in ("aot", "aot_unpaired"):
        pol, ref = (policy_odds, ref_odds) if loss_type == "aot" else (dc, dr)
        za = beta * (pol.sort().values - ref.sort().values)
        return -(1 - eps) * ls(za) - eps * ls(-za)
    if loss_type == "sigmoid":
        return -(1 - eps) * ls(z) - eps * ls(-z)
    if loss_type == "hinge":
        return torch.relu(1 - z)
    if loss_type == "ipo":
        return ((dc / lc - dr / lr) - 1 / (2 * beta)) ** 2
    if loss_type == "robust":
        return (-(1 - eps) * ls(z) + eps * ls(-z)) / (1 - 2 * eps)
    if loss_type == "exo_pair":
        e = eps or 1e-3
        return torch.sigmoid(z) * (ls(z) - math.log(1 - e)) + torch.sigmoid(-z) * (ls(-z) - math.log(e))
    if loss_type == "nca_pair":
        return -ls(beta * dc) - 0.5 * ls(-beta * dc) - 0.5 * ls(-beta * dr)
    if loss_type == "bco_pair":
        delta = torch.cat([beta * dc, beta * dr]).detach().mean()
        return -ls(beta * dc - delta) - ls(-(beta * dr - delta))
    if loss_type == "sppo_hard":
        return (dc - 1 / (2 * beta)) ** 2 + (dr + 1 / (2 * beta)) ** 2
    if loss_type == "apo_zero":
        return (1 - torch.sigmoid(beta * dc)) + torch.sigmoid(beta * dr)
    if loss_type == "apo_down":
        return torch.sigmoid(beta * dc) + (1 - torch.sigmoid(z))
    if loss_type == "discopop":
        m = torch.sigmoid(z / 0.05)
        return -ls(z) * (1 - m) + torch.exp(-z) * m
    assert loss_type == "sigmoid_norm"
    return -ls(beta * (dc / lc - dr / lr))


# ----------------------------------------------------------------------------- comparison


def compare(fused, eager, tensors, dtype, backend, grad_names=("hidden", "weight")):
    """Run ``fused(**low-precision leaves, backend)`` and ``eager(**fp32 leaves)``; compare loss, metrics, grads."""
    skip_unless_backend_runs(backend)
    low = {k: leaf(v, dtype) if k in grad_names else v for k, v in tensors.items()}
    ref = {k: leaf(low[k].float(), torch.float32) if k in grad_names else v for k, v in tensors.items()}
    loss, metrics = fused(backend=backend, **low)
    grads = torch.autograd.grad(loss, [low[k] for k in grad_names])
    ref_loss, ref_metrics = eager(**ref)
    ref_grads = torch.autograd.grad(ref_loss, [ref[k] for k in grad_names])
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert_close(loss, ref_loss, dtype, "loss")
    assert set(metrics) == set(ref_metrics)
    for key, want in ref_metrics.items():
        assert not metrics[key].requires_grad, key
        assert_close(metrics[key], want, dtype, key)
    for name, got, want in zip(grad_names, grads, ref_grads):
        assert got.dtype == low[name].dtype
        assert_close(got, want, dtype, f"d_{name}")
    return loss, metrics


# ----------------------------------------------------------------------------- DPO family


def eager_wpo_weights(hidden, weight, labels, **head):
    """WPO's pair weights ``[B]`` from full logits (TRL's use_weighting, each token's factor at its own position)."""
    with torch.no_grad():
        logsm = torch.log_softmax(eager_logits(hidden, weight, **head), dim=-1)
        mask = labels != -100
        adjusted = torch.where(mask, eager_token_logps(hidden, weight, labels, **head)
                               - torch.logsumexp(2 * logsm, dim=-1), 0.0)
        per_row = adjusted.sum(-1) / mask.sum(-1)
        b = labels.shape[0] // 2
        return torch.exp(per_row[:b] + per_row[b:]).clamp(max=1)


def eager_f_scores(log_ratios, divergence, alpha):
    """f-DPO's f'(u) of each log ratio, written out (TRL's forms)."""
    if divergence == "forward_kl":
        return -torch.exp(-log_ratios)
    if divergence == "js_divergence":
        return torch.log(torch.exp(log_ratios) / (1 + torch.exp(log_ratios)))
    if divergence == "alpha_divergence":
        return torch.exp(log_ratios) ** (alpha - 1) / (alpha - 1)
    return log_ratios


def dpo_case(loss_type, label_smoothing, rpo_alpha, ref_from_hidden, softcap=None, loss_weights=None,
             use_weighting=False, f_divergence=("reverse_kl", 1.0), ld_alpha=None):
    hidden, weight = make_model(2 * PAIRS)
    labels = make_labels(2 * PAIRS)
    # bf16-representable, so that the fused side sees the same reference in either input dtype
    ref_hidden = (hidden + 0.3 * torch.randn_like(hidden)).to(torch.bfloat16).float()
    with torch.no_grad():
        ref_seq = eager_token_logps(ref_hidden, weight, labels).sum(-1)
    beta = 0.7

    def fused(hidden, weight, labels, backend, bias=None):
        ref_kw = dict(ref_hidden=ref_hidden.to(hidden.dtype)) if ref_from_hidden else dict(
            ref_chosen_logps=ref_seq[:PAIRS], ref_rejected_logps=ref_seq[PAIRS:])
        return fused_linear_dpo_loss(hidden, weight, labels, bias=bias, softcap=softcap, beta=beta,
                                     loss_type=loss_type, loss_weights=loss_weights,
                                     label_smoothing=label_smoothing, rpo_alpha=rpo_alpha,
                                     use_weighting=use_weighting, f_divergence_type=f_divergence[0],
                                     f_alpha_divergence_coef=f_divergence[1], ld_alpha=ld_alpha, backend=backend,
                                     **ref_kw)

    def eager(hidden, weight, labels, bias=None):
        p = eager_pairs(hidden, weight, labels, ld_alpha=ld_alpha, bias=bias, softcap=softcap)
        with torch.no_grad():
            ref_tokens = eager_token_logps(ref_hidden, weight, labels, bias=bias, softcap=softcap)
            ref = (ref_tokens * eager_ld_weights(labels, ld_alpha)).sum(-1) if ref_from_hidden else ref_seq
        dc, dr = p["c"] - ref[:PAIRS], p["r"] - ref[PAIRS:]
        types = [loss_type] if isinstance(loss_type, str) else loss_type
        weights = dict(zip(types, loss_weights or [1.0] * len(types)))
        losses = weights.pop("sft", 0.0) * p["nll"]
        sc, sr = (eager_f_scores(d, *f_divergence) for d in (dc, dr))
        for name, w in weights.items():
            losses = losses + w * eager_dpo_losses(name, sc, sr, beta, label_smoothing, p["lc"], p["lr"],
                                                   policy_odds=p["c"] - p["r"], ref_odds=ref[:PAIRS] - ref[PAIRS:])
        metrics = eager_pair_metrics(p, beta * dc, beta * dr, p["c"], p["r"])
        if use_weighting:
            pair_weights = eager_wpo_weights(hidden, weight, labels, bias=bias, softcap=softcap)
            # a real weighting: below the clamp at 1, and unequal pairs (so a pair must get its own weight)
            assert pair_weights.max() < 0.95 and pair_weights.max() > 1.2 * pair_weights.min()
            losses = losses * pair_weights
            metrics["policy_weights"] = pair_weights.mean()
        return rpo_alpha * p["nll"] + losses.mean(), metrics

    return fused, eager, dict(hidden=hidden, weight=weight, labels=labels)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("loss_type, label_smoothing", [("sigmoid", 0.1), ("ipo", 0.0)])
def test_dpo_rpo_matches_eager(backend, dtype, loss_type, label_smoothing):
    fused, eager, tensors = dpo_case(loss_type, label_smoothing, rpo_alpha=0.5, ref_from_hidden=True)
    compare(fused, eager, tensors, dtype, backend)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mpo_weighted_loss_types_match_eager(backend, dtype):
    """MPO (TRL's list of loss types): 0.8 sigmoid + 0.2 bco_pair + 1.0 chosen NLL (``sft``), values and grads."""
    fused, eager, tensors = dpo_case(["sigmoid", "bco_pair", "sft"], 0.0, rpo_alpha=0.0, ref_from_hidden=True,
                                     loss_weights=[0.8, 0.2, 1.0])
    compare(fused, eager, tensors, dtype, backend)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("loss_type, rpo_alpha", [("sigmoid", 0.5), (["ipo", "sft"], 0.0)])
def test_wpo_weighted_dpo_matches_eager(backend, dtype, loss_type, rpo_alpha):
    """WPO (use_weighting): each pair's loss times min(1, exp(mean adjusted logps of chosen + rejected))."""
    fused, eager, tensors = dpo_case(loss_type, 0.0, rpo_alpha=rpo_alpha, ref_from_hidden=True,
                                     loss_weights=None if isinstance(loss_type, str) else [1.0, 0.5],
                                     use_weighting=True, softcap=3.0)
    compare(fused, eager, tensors, dtype, backend)


def test_mpo_loss_types_are_checked():
    _, _, tensors = dpo_case("sigmoid", 0.0, rpo_alpha=0.0, ref_from_hidden=False)
    hidden, weight, labels = tensors["hidden"], tensors["weight"], tensors["labels"]
    zeros = torch.zeros(PAIRS, device=device())
    ref = dict(ref_chosen_logps=zeros, ref_rejected_logps=zeros)
    for kwargs, message in [({"loss_type": ["sigmoid", "sigmoid"]}, "each type may appear once"),
                            ({"loss_type": ["sigmoid", "hinge"], "loss_weights": [1.0]}, "one weight per loss type"),
                            ({"loss_type": ["sft"]}, "at least one preference loss type besides sft"),
                            ({"loss_type": ["sigmoid"], "loss_weights": [-1.0]}, "loss_weights")]:
        with pytest.raises(ValueError, match=message):
            fused_linear_dpo_loss(hidden, weight, labels, backend="torch", **ref, **kwargs)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("f_divergence", [("forward_kl", 1.0), ("js_divergence", 1.0), ("alpha_divergence", 0.5)],
                         ids=lambda f: f[0])
def test_f_divergence_dpo_matches_eager(backend, dtype, f_divergence):
    """f-DPO: sigmoid plus IPO (length-normalised scores) on f'(pi / pi_ref) instead of the log ratios."""
    fused, eager, tensors = dpo_case(["sigmoid", "ipo"], 0.0, rpo_alpha=0.0, ref_from_hidden=True,
                                     f_divergence=f_divergence)
    compare(fused, eager, tensors, dtype, backend)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ld_dpo_matches_eager(backend, dtype):
    """LD-DPO (ld_alpha 0.3): the policy's and the reference's logps weigh the longer reply's tail by 0.3."""
    fused, eager, tensors = dpo_case("sigmoid", 0.0, rpo_alpha=0.5, ref_from_hidden=True, ld_alpha=0.3)
    lengths = (tensors["labels"] != -100).sum(-1)
    assert (lengths[:PAIRS] != lengths[PAIRS:]).any()  # some pair has a tail to weigh
    compare(fused, eager, tensors, dtype, backend)


@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
def test_dpo_every_loss_type_matches_eager(loss_type):
    smoothing = 0.2 if loss_type in SMOOTHED_LOSS_TYPES else 0.0
    fused, eager, tensors = dpo_case(loss_type, smoothing, rpo_alpha=0.0, ref_from_hidden=False)
    compare(fused, eager, tensors, torch.float32, "torch")


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_dpo_bias_and_softcap_reach_policy_and_reference(backend):
    fused, eager, tensors = dpo_case("sigmoid", 0.0, rpo_alpha=1.0, ref_from_hidden=True, softcap=2.5)
    tensors["bias"] = torch.randn(V, device=device())
    compare(fused, eager, tensors, torch.float32, backend, grad_names=("hidden", "weight", "bias"))


def alphapo_eager(logps, reward_alpha):
    """AlphaPO's reward ``(1 - p^-alpha) / alpha`` with ``p = e^L`` (``L`` at alpha 0), straight from the paper."""
    return logps if reward_alpha == 0 else (1 - torch.exp(logps) ** -reward_alpha) / reward_alpha


def pairwise_case(method):
    """CPO (``cpo``, ``cpo-hinge``, ``cpo-ipo``), SimPO (``simpo``, ``simpo-alphapo``) or ORPO: fused wrapper and
    eager formula on the same random pairwise batch. The hinge and AlphaPO cases reshape the rewards (``alpha``)."""
    hidden, weight = make_model(2 * PAIRS)
    labels = make_labels(2 * PAIRS)
    method, _, variant = method.partition("-")
    cpo_type = variant if method == "cpo" else ""
    beta, alpha, gamma, eps = 0.3, 0.7, 0.4, 0.0 if variant else 0.1
    reward_alpha = {"hinge": 0.05, "alphapo": -1.0}.get(variant, 0.0)

    def fused(hidden, weight, labels, backend):
        if method == "cpo":
            return fused_linear_cpo_loss(hidden, weight, labels, beta=beta, cpo_alpha=alpha, label_smoothing=eps,
                                         loss_type=cpo_type or "sigmoid", alpha=reward_alpha, backend=backend)
        if method == "simpo":
            return fused_linear_simpo_loss(hidden, weight, labels, beta=beta, simpo_gamma=gamma, cpo_alpha=alpha,
                                           label_smoothing=eps, alpha=reward_alpha, backend=backend)
        return fused_linear_orpo_loss(hidden, weight, labels, beta=beta, backend=backend)

    def eager(hidden, weight, labels):
        p = eager_pairs(hidden, weight, labels)
        ls = F.logsigmoid
        ac, ar = p["c"] / p["lc"], p["r"] / p["lr"]
        if method == "cpo":
            lc, lr = (ac, ar) if cpo_type == "ipo" else (p["c"], p["r"])
            rc, rr = alphapo_eager(lc, reward_alpha), alphapo_eager(lr, reward_alpha)
            h = rc - rr
            losses = {"hinge": torch.relu(1 - beta * h), "ipo": (h - 1 / (2 * beta)) ** 2,
                      "": -(1 - eps) * ls(beta * h) - eps * ls(-beta * h)}[cpo_type]
            loss = losses.mean() + alpha * p["nll"]
            return loss, eager_pair_metrics(p, beta * rc, beta * rr, lc, lr)
        if method == "simpo":
            rc, rr = alphapo_eager(ac, reward_alpha), alphapo_eager(ar, reward_alpha)
            z = beta * (rc - rr) - gamma
            loss = (-(1 - eps) * ls(z) - eps * ls(-z)).mean() + alpha * p["nll"]
            return loss, eager_pair_metrics(p, beta * rc, beta * rr, ac, ar)
        log_odds = (ac - ar) - (torch.log(1 - torch.exp(ac)) - torch.log(1 - torch.exp(ar)))
        loss = p["nll"] - beta * ls(log_odds).mean()
        metrics = eager_pair_metrics(p, beta * ac, beta * ar, ac, ar)
        metrics["log_odds_ratio"] = ls(log_odds).mean().detach()
        metrics["log_odds_chosen"] = log_odds.mean().detach()
        return loss, metrics

    return fused, eager, dict(hidden=hidden, weight=weight, labels=labels)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("method", ["cpo", "cpo-hinge", "cpo-ipo", "simpo", "simpo-alphapo", "orpo"])
def test_reference_free_pairwise_matches_eager(backend, dtype, method):
    fused, eager, tensors = pairwise_case(method)
    compare(fused, eager, tensors, dtype, backend)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("loss_type", KTO_LOSS_TYPES)
def test_kto_matches_eager(backend, dtype, loss_type):
    """KTO against the mismatched-pair KL baseline, apo_zero_unpaired without one, and bco against the mean reward
    (a fresh running mean: this batch's)."""
    rows, beta, wd, wu = 5, 0.5, 1.3, 0.8
    hidden, weight = make_model(rows)
    labels, kl_labels = make_labels(rows), make_labels(rows)
    kl_hidden = torch.randn_like(hidden)
    ref_hidden, ref_kl_hidden = hidden + 0.5 * torch.randn_like(hidden), kl_hidden + 0.5 * torch.randn_like(hidden)
    desirable = torch.tensor([True, False, True, True, False], device=device())

    def fused(hidden, weight, labels, backend):
        dt = hidden.dtype
        baseline = dict(kl_hidden=kl_hidden.to(dt), kl_labels=kl_labels, ref_kl_hidden=ref_kl_hidden.to(dt))
        return fused_linear_kto_loss(hidden, weight, labels, desirable, ref_hidden=ref_hidden.to(dt), beta=beta,
                                     desirable_weight=wd, undesirable_weight=wu, loss_type=loss_type, backend=backend,
                                     **(baseline if loss_type == "kto" else {}))

    def eager(hidden, weight, labels):
        def frozen(h, lab):  # the frozen inputs reach the fused side in the input dtype
            return eager_token_logps(h.to(dtype).float(), weight, lab).sum(-1).detach()

        logps = eager_token_logps(hidden, weight, labels).sum(-1)
        ref, kl_pol, kl_ref = frozen(ref_hidden, labels), frozen(kl_hidden, kl_labels), frozen(ref_kl_hidden, kl_labels)
        kl = (kl_pol - kl_ref).mean().clamp(min=0)
        d = logps - ref
        if loss_type == "kto":
            losses = torch.where(desirable, wd * (1 - torch.sigmoid(beta * (d - kl))),
                                 wu * (1 - torch.sigmoid(beta * (kl - d))))
        elif loss_type == "bco":
            shift = (beta * d).mean().detach()
            losses = torch.where(desirable, -wd * F.logsigmoid(beta * d - shift), -wu * F.logsigmoid(shift - beta * d))
        else:
            losses = torch.where(desirable, wd * (1 - torch.sigmoid(beta * d)), wu * torch.sigmoid(beta * d))
        rewards = (beta * d).detach()
        metrics = {"kto": {"kl": kl}, "bco": {"delta": rewards.mean()}}.get(loss_type, {})
        metrics |= {
            "rewards/chosen": rewards[desirable].mean(), "rewards/rejected": rewards[~desirable].mean(),
            "logps/chosen": logps[desirable].detach().mean(), "logps/rejected": logps[~desirable].detach().mean(),
        }
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
        return losses.mean(), metrics

    compare(fused, eager, dict(hidden=hidden, weight=weight, labels=labels), dtype, backend)


# ----------------------------------------------------------------------------- GRPO / PPO

ROWS = 3  # with T = 7: an odd number of tokens


def rollout_case(rows, temperature):
    """``(hidden, weight, labels, mask, logps)``: a model, labels, their completion mask and the model's own fp32
    token logprobs at ``temperature`` (the base the tests perturb into old logprobs)."""
    hidden, weight = make_model(rows)
    labels = make_labels(rows)
    with torch.no_grad():
        base = eager_token_logps(hidden, weight, labels, temperature)
    return hidden, weight, labels, labels != -100, base


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("level, loss_type, quantile", [("token", "grpo", 1.0), ("sequence", "dapo", 1.0),
                                                       ("token", "bnpo", 0.4), ("sequence", "cispo", 1.0),
                                                       ("token", "sapo", 1.0), ("sequence", "luspo", 1.0),
                                                       ("token", "vespo", 1.0)])
def test_grpo_matches_eager(backend, dtype, level, loss_type, quantile):
    temperature, beta, eps, eps_high, delta = 0.9, 0.05, 0.2, 0.28, 1.5
    hidden, weight, labels, mask, base = rollout_case(ROWS, temperature)
    old_logps = torch.where(mask, base + 0.4 * torch.randn_like(base), 0.0)
    ref_hidden = hidden + 0.4 * torch.randn_like(hidden)
    advantages = torch.tensor([1.2, -0.7, 0.4], device=device())

    def fused(hidden, weight, labels, backend):
        return fused_linear_grpo_loss(hidden, weight, labels, advantages, old_logps=old_logps,
                                      ref_hidden=ref_hidden.to(hidden.dtype), beta=beta, epsilon=eps,
                                      epsilon_high=eps_high,
                                      delta=None if loss_type in ("cispo", "sapo", "vespo") else delta,
                                      importance_sampling_level=level,
                                      loss_type=loss_type, top_entropy_quantile=quantile, temperature=temperature,
                                      sapo_temperature_pos=0.8, sapo_temperature_neg=1.3, backend=backend)

    def eager(hidden, weight, labels):
        logits = eager_logits(hidden, weight, temperature)
        logsm = torch.log_softmax(logits, -1)
        logps = torch.where(mask, logsm.gather(-1, labels.clamp(min=0)[..., None])[..., 0], 0.0)
        entropy = -(logsm.exp() * logsm).sum(-1)
        with torch.no_grad():
            ref = eager_token_logps(ref_hidden.to(dtype).float(), weight, labels, temperature)
        log_ratio = (logps - old_logps) * mask
        if level == "sequence":
            log_ratio = (log_ratio.sum(-1) / mask.sum(-1))[:, None].expand_as(logps)
        rho = torch.exp(log_ratio)
        a = advantages[:, None]
        term1 = torch.clamp(rho, max=delta) * a
        term2 = torch.clamp(rho, 1 - eps, 1 + eps_high) * a
        k3 = torch.exp(ref - logps) - (ref - logps) - 1
        kept = entropy.detach() >= torch.quantile(entropy.detach()[mask], 1 - quantile)  # the top 40%
        assert quantile == 1.0 or 0 < int(kept[mask].sum()) < int(mask.sum())
        policy_term = -torch.minimum(term1, term2)
        if loss_type == "cispo":
            policy_term = -torch.clamp(rho, max=1 + eps_high).detach() * a * logps
        if loss_type == "sapo":
            tau = torch.where(a > 0, 0.8, 1.3)
            policy_term = -torch.sigmoid(tau * (rho - 1)) * 4 / tau * a
        if loss_type == "vespo":  # default k, lambda: 2, 3 where A >= 0, else 3, 2
            w = torch.exp(((logps - old_logps) * mask).sum(-1, keepdim=True)).detach()
            k, lam = torch.where(a >= 0, 2.0, 3.0), torch.where(a >= 0, 3.0, 2.0)
            policy_term = -torch.exp(lam + k * torch.log(w) - lam * w) * a * logps
        per_token = (policy_term * kept + beta * k3) * mask
        if loss_type in ("grpo", "sapo"):
            loss = (per_token.sum(-1) / mask.sum(-1)).mean()
        elif loss_type == "luspo":
            loss = per_token.sum(-1).mean()
        else:
            loss = per_token.sum() / mask.sum()
        soft = loss_type in ("sapo", "vespo")
        low = ((rho < 1 - eps) & (a < 0) & (loss_type != "cispo") & (not soft)).float()
        high = ((rho > 1 + eps_high) & ((a > 0) | (loss_type == "cispo")) & (not soft)).float()
        metrics = {
            "kl": k3.detach()[mask].mean(), "entropy": entropy.detach()[mask].mean(),
            "clip_ratio/low_mean": low[mask].mean(), "clip_ratio/high_mean": high[mask].mean(),
            "clip_ratio/region_mean": torch.maximum(low, high)[mask].mean(),
        }
        return loss, metrics

    compare(fused, eager, dict(hidden=hidden, weight=weight, labels=labels), dtype, backend)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rloo_matches_eager(backend, dtype):
    """Five completions whose summed log ratios put them clipped above (A > 0), clipped below (A < 0), inside the
    clip range, and outside it on the unclipped side (A < 0: the pessimistic term keeps rho)."""
    temperature, eps, eps_high, rows = 0.9, 0.2, 0.28, 5
    hidden, weight, labels, mask, base = rollout_case(rows, temperature)
    noise = torch.where(mask, 0.3 * torch.randn_like(base), 0.0)
    noise = noise - mask * (noise.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True))  # each row's sum is 0
    shift = torch.tensor([-0.5, 0.6, -0.05, -0.45, 0.1], device=device())  # summed log ratios: -shift
    old_logps = torch.where(mask, base + noise + (shift / mask.sum(-1))[:, None], 0.0)
    advantages = torch.tensor([1.2, -0.7, 0.4, -0.9, -1.0], device=device())

    def fused(hidden, weight, labels, backend):
        return fused_linear_rloo_loss(hidden, weight, labels, advantages, old_logps=old_logps, epsilon=eps,
                                      epsilon_high=eps_high, temperature=temperature, backend=backend)

    def eager(hidden, weight, labels):
        logsm = torch.log_softmax(eager_logits(hidden, weight, temperature), -1)
        logps = torch.where(mask, logsm.gather(-1, labels.clamp(min=0)[..., None])[..., 0], 0.0)
        entropy = -(logsm.exp() * logsm).sum(-1)
        rho = torch.exp(logps.sum(-1) - old_logps.sum(-1))
        per_completion = -torch.minimum(rho * advantages, torch.clamp(rho, 1 - eps, 1 + eps_high) * advantages)
        low = ((rho < 1 - eps) & (advantages < 0)).float()
        high = ((rho > 1 + eps_high) & (advantages > 0)).float()
        assert low.tolist() == [0, 1, 0, 0, 0] and high.tolist() == [1, 0, 0, 0, 0]
        metrics = {"entropy": entropy.detach()[mask].mean(), "clip_ratio/low_mean": low.mean(),
                   "clip_ratio/high_mean": high.mean(), "clip_ratio/region_mean": (low + high).mean()}
        return per_completion.mean(), metrics

    compare(fused, eager, dict(hidden=hidden, weight=weight, labels=labels), dtype, backend)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ppo_matches_eager(backend, dtype):
    temperature, clip, clip_v, vf_coef = 0.9, 0.2, 0.3, 0.1
    hidden, weight, labels, mask, base = rollout_case(ROWS, temperature)
    old_logps = torch.where(mask, base + 0.3 * torch.randn_like(base), 0.0)
    advantages = torch.randn(ROWS, T, device=device())
    old_values, returns = torch.randn(ROWS, T, device=device()), torch.randn(ROWS, T, device=device())
    values = old_values + 0.5 * torch.randn(ROWS, T, device=device())

    def fused(hidden, weight, labels, values, backend):
        return fused_linear_ppo_loss(hidden, weight, labels, old_logps=old_logps, advantages=advantages,
                                     values=values, old_values=old_values, returns=returns, cliprange=clip,
                                     cliprange_value=clip_v, vf_coef=vf_coef, temperature=temperature,
                                     backend=backend)

    def eager(hidden, weight, labels, values):
        logps = eager_token_logps(hidden, weight, labels, temperature)
        diff = (logps - old_logps) * mask
        rho = torch.exp(diff)
        pg1, pg2 = -advantages * rho, -advantages * torch.clamp(rho, 1 - clip, 1 + clip)
        pg = torch.maximum(pg1, pg2)[mask].mean()
        vclip = torch.clamp(values, old_values - clip_v, old_values + clip_v)
        v1, v2 = (values - returns) ** 2, (vclip - returns) ** 2
        vf = 0.5 * torch.maximum(v1, v2)[mask].mean()
        metrics = {
            "policy/approxkl_avg": 0.5 * (diff.detach() ** 2)[mask].mean(),
            "policy/clipfrac_avg": (pg2 > pg1).float()[mask].mean(),
            "loss/policy_avg": pg.detach(), "loss/value_avg": vf.detach(),
            "val/clipfrac_avg": (v2 > v1).float()[mask].mean(),
        }
        return pg + vf_coef * vf, metrics

    compare(fused, eager, dict(hidden=hidden, weight=weight, labels=labels, values=values), dtype, backend,
            grad_names=("hidden", "weight", "values"))


# ----------------------------------------------------------------------------- KD

K = 4


def kd_case(temperature, divergence, normalize, ce_alpha, teacher_temperature=1.0, kd_alpha=1.0):
    hidden, weight = make_model(ROWS)
    labels = make_labels(ROWS)
    target_ids = torch.randint(0, V, (ROWS, T, K), device=device())
    target_logprobs = torch.log_softmax(torch.randn(ROWS, T, K, device=device()), -1) - 0.3
    kd_beta = 0.3

    def fused(hidden, weight, labels, backend):
        return fused_linear_topk_kd_loss(hidden, weight, labels, target_ids, target_logprobs,
                                         kd_temperature=temperature, teacher_temperature=teacher_temperature,
                                         divergence=divergence, kd_beta=kd_beta, kd_normalize_topk=normalize,
                                         kd_alpha=kd_alpha, kd_ce_alpha=ce_alpha, backend=backend)

    def eager(hidden, weight, labels):
        mask = labels != -100
        log_q = torch.log_softmax(eager_logits(hidden, weight, temperature), -1).gather(-1, target_ids)
        if normalize:
            log_q = torch.log_softmax(log_q, -1)
        p = torch.exp(target_logprobs)
        p = p / p.sum(-1, keepdim=True)
        p = p ** (teacher_temperature / temperature)
        p = p / p.sum(-1, keepdim=True)
        q = torch.exp(log_q)
        if divergence == "forward_kl":
            per_pos = (p * (torch.log(p) - log_q)).sum(-1)
        elif divergence == "reverse_kl":
            per_pos = (q * (log_q - torch.log(p))).sum(-1)
        else:
            m = kd_beta * p + (1 - kd_beta) * q
            per_pos = kd_beta * (p * (torch.log(p) - torch.log(m))).sum(-1) \
                + (1 - kd_beta) * (q * (log_q - torch.log(m))).sum(-1)
        kd = per_pos[mask].sum() / mask.sum()
        loss = kd_alpha * temperature ** 2 * kd
        metrics = {"kd_loss": kd.detach()}
        if ce_alpha:
            ce = F.cross_entropy(eager_logits(hidden, weight).reshape(-1, V), labels.reshape(-1), ignore_index=-100)
            loss = loss + ce_alpha * ce
            metrics["ce_loss"] = ce.detach()
        return loss, metrics

    return fused, eager, dict(hidden=hidden, weight=weight, labels=labels)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_topk_kd_with_ce_matches_eager(backend, dtype, temperature):
    fused, eager, tensors = kd_case(temperature, "forward_kl", False, ce_alpha=0.4, teacher_temperature=0.7)
    compare(fused, eager, tensors, dtype, backend)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("normalize", [False, True])
def test_topk_kd_divergences_match_eager(divergence, normalize):
    fused, eager, tensors = kd_case(1.5, divergence, normalize, ce_alpha=0.0, kd_alpha=0.6)
    compare(fused, eager, tensors, torch.float32, "torch")


# ----------------------------------------------------------------------------- every term reaches the backward


def weight_grad(fn, hidden, weight, labels, **kw):
    h, w = leaf(hidden, torch.float32), leaf(weight, torch.float32)
    loss, _ = fn(h, w, labels, backend="torch", **kw)
    return torch.autograd.grad(loss, (h, w))


@pytest.mark.parametrize("fn, coef", [
    (fused_linear_dpo_loss, "rpo_alpha"),
    (fused_linear_cpo_loss, "cpo_alpha"),
    (fused_linear_simpo_loss, "cpo_alpha"),
    (fused_linear_orpo_loss, "beta"),
], ids=["rpo", "cpo", "simpo", "orpo"])
def test_mixed_pairwise_terms_reach_backward(fn, coef):
    hidden, weight = make_model(2 * PAIRS)
    labels = make_labels(2 * PAIRS)
    extra = dict(ref_hidden=hidden + 0.3 * torch.randn_like(hidden)) if fn is fused_linear_dpo_loss else {}
    base = weight_grad(fn, hidden, weight, labels, **{coef: 0.5}, **extra)
    more = weight_grad(fn, hidden, weight, labels, **{coef: 1.5}, **extra)
    for b, m in zip(base, more):
        assert (b - m).abs().max() > 1e-4


def test_kd_and_ce_terms_reach_backward():
    hidden, weight = make_model(ROWS)
    labels = make_labels(ROWS)
    ids = torch.randint(0, V, (ROWS, T, K), device=device())
    lps = torch.log_softmax(torch.randn(ROWS, T, K, device=device()), -1)

    def kd(**kw):
        return weight_grad(lambda h, w, lab, **k: fused_linear_topk_kd_loss(h, w, lab, ids, lps, **k),
                           hidden, weight, labels, **kw)

    base = kd(kd_alpha=1.0, kd_ce_alpha=0.5)
    for changed in (kd(kd_alpha=2.0, kd_ce_alpha=0.5), kd(kd_alpha=1.0, kd_ce_alpha=1.0)):
        for b, m in zip(base, changed):
            assert (b - m).abs().max() > 1e-4
    # T^2 is in the gradient: at T=2, kd_alpha=1 gives exactly 4x the gradient of kd_alpha=1/4.
    at_t2 = kd(kd_temperature=2.0)
    quarter = kd(kd_temperature=2.0, kd_alpha=0.25)
    for a, q in zip(at_t2, quarter):
        torch.testing.assert_close(a, 4 * q)


# ----------------------------------------------------------------------------- bad input


def test_wrappers_reject_bad_input():
    hidden, weight = make_model(2 * PAIRS)
    labels = make_labels(2 * PAIRS)
    with pytest.raises(ValueError, match="hidden"):
        fused_linear_cpo_loss(hidden[:5], weight, labels[:5], backend="torch")
    with pytest.raises(ValueError, match="labels"):
        fused_linear_cpo_loss(hidden, weight, labels[:, :-1], backend="torch")
    empty = labels.clone()
    empty[2] = -100
    with pytest.raises(ValueError, match="labels"):
        fused_linear_cpo_loss(hidden, weight, empty, backend="torch")
    with pytest.raises(ValueError, match="ref_chosen_logps"):
        fused_linear_dpo_loss(hidden, weight, labels, backend="torch")
    with pytest.raises(ValueError, match="ref_rejected_logps"):
        fused_linear_dpo_loss(hidden, weight, labels, ref_chosen_logps=torch.zeros(PAIRS),
                              ref_rejected_logps=torch.zeros(PAIRS + 1), backend="torch")
    with pytest.raises(ValueError, match="loss_type"):
        fused_linear_dpo_loss(hidden, weight, labels, ref_hidden=hidden, loss_type="sigmod", backend="torch")
    with pytest.raises(ValueError, match="ref_bias"):
        fused_linear_dpo_loss(hidden, weight, labels, ref_hidden=hidden, ref_bias=torch.zeros(V), backend="torch")
    with pytest.raises(ValueError, match="rpo_alpha"):
        fused_linear_dpo_loss(hidden, weight, labels, ref_hidden=hidden, rpo_alpha=-1.0, backend="torch")
    with pytest.raises(ValueError, match="advantages"):
        fused_linear_grpo_loss(hidden, weight, labels, torch.zeros(3), beta=0.0, backend="torch")
    with pytest.raises(ValueError, match="ref_logps"):
        fused_linear_grpo_loss(hidden, weight, labels, torch.zeros(2 * PAIRS), backend="torch")
    one = dict(kl_hidden=hidden[:1], kl_labels=labels[:1], ref_logps=torch.zeros(1), ref_kl_logps=torch.zeros(1),
               backend="torch")
    with pytest.raises(ValueError, match="logps: KTO needs a batch of at least 2"):
        fused_linear_kto_loss(hidden[:1], weight, labels[:1], torch.tensor([True]), **one)
    with pytest.raises(ValueError, match="kl_logps"):
        fused_linear_kto_loss(hidden[:2], weight, labels[:2], torch.tensor([True, False]), kl_hidden=hidden[:3],
                              kl_labels=labels[:3], ref_logps=torch.zeros(2), ref_kl_logps=torch.zeros(2),
                              backend="torch")
    with pytest.raises(ValueError, match="target_ids"):
        fused_linear_topk_kd_loss(hidden, weight, labels, torch.zeros(2 * PAIRS, T - 1, K, dtype=torch.long),
                                  torch.zeros(2 * PAIRS, T - 1, K), backend="torch")
    with pytest.raises(ValueError, match="kd_temperature"):
        fused_linear_topk_kd_loss(hidden, weight, labels, torch.zeros(2 * PAIRS, T, K, dtype=torch.long),
                                  torch.zeros(2 * PAIRS, T, K), kd_temperature=0.0, backend="torch")
