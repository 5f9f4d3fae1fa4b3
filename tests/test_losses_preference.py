"""Preference losses on sequence logps: hand-computed answers, metrics and bad input."""
import math
import warnings

import pytest
import torch

from fusedrl.kernels.losses import (
    DPO_LOSS_TYPES,
    RunningMean,
    alphapo_rewards,
    check_kto_balance,
    cpo_loss,
    dpo_loss,
    kto_loss,
    kto_metrics,
    orpo_loss,
    preference_metrics,
    reward_model_loss,
    simpo_loss,
)
from fusedrl.kernels.losses.preference import log1mexp

LN2, LN3 = math.log(2.0), math.log(3.0)


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def logsig(x):
    return -math.log1p(math.exp(-x))


# beta = 0.5, dc = 2 ln 2, dr = 0, |yc| = 2, |yr| = 1: z = beta * h = ln 2, sigmoid(z) = 2/3.
HAND = {
    "sigmoid": (0.1, -0.9 * math.log(2 / 3) - 0.1 * math.log(1 / 3)),
    "hinge": (0.0, 1 - LN2),
    "ipo": (0.0, (LN2 - 1) ** 2),
    "robust": (0.1, (-0.9 * math.log(2 / 3) + 0.1 * math.log(1 / 3)) / 0.8),
    "exo_pair": (0.1, 2 / 3 * (math.log(2 / 3) - math.log(0.9)) + 1 / 3 * (math.log(1 / 3) - math.log(0.1))),
    "nca_pair": (0.0, -math.log(2 / 3) - 0.5 * math.log(1 / 3) - 0.5 * math.log(1 / 2)),
    "bco_pair": (0.0, -2 * logsig(LN2 / 2)),
    "sppo_hard": (0.0, (2 * LN2 - 1) ** 2 + 1.0),
    # one pair: the sorted quantiles are the pair itself, so both AOT forms are the smoothed sigmoid loss
    "aot": (0.1, -0.9 * math.log(2 / 3) - 0.1 * math.log(1 / 3)),
    "aot_unpaired": (0.1, -0.9 * math.log(2 / 3) - 0.1 * math.log(1 / 3)),
    "apo_zero": (0.0, 1 / 3 + 1 / 2),
    "apo_down": (0.0, 2 / 3 + 1 / 3),
    "discopop": (0.0, math.log(3 / 2) * (1 - 1 / (1 + math.exp(-LN2 / 0.05)))
                 + 0.5 / (1 + math.exp(-LN2 / 0.05))),
    "sigmoid_norm": (0.0, math.log1p(2 ** -0.5)),
}

# equal policy and reference logps (h = 0), beta = 0.5
EQUAL = {
    "sigmoid": LN2, "hinge": 1.0, "ipo": 1.0, "robust": LN2,
    "exo_pair": 0.5 * (math.log(0.5) - math.log(0.999)) + 0.5 * (math.log(0.5) - math.log(1e-3)),
    "nca_pair": 2 * LN2, "bco_pair": 2 * LN2, "sppo_hard": 2.0, "aot": LN2, "aot_unpaired": LN2,
    "apo_zero": 1.0, "apo_down": 1.0,
    "discopop": 0.5 * LN2 + 0.5, "sigmoid_norm": LN2,
}


def test_hand_tables_cover_every_loss_type():
    assert set(HAND) == set(EQUAL) == set(DPO_LOSS_TYPES)


@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
def test_dpo_hand_computed(loss_type):
    smoothing, expected = HAND[loss_type]
    chosen = t(2 * LN2 - 5.0).requires_grad_()
    losses, cr, rr = dpo_loss(chosen, t(-7.0), t(-5.0), t(-7.0), beta=0.5, loss_type=loss_type,
                              label_smoothing=smoothing, chosen_lengths=torch.tensor([2]),
                              rejected_lengths=torch.tensor([1]))
    torch.testing.assert_close(losses, t(expected))
    torch.testing.assert_close(cr, t(LN2))
    torch.testing.assert_close(rr, t(0.0))
    assert not cr.requires_grad and not rr.requires_grad
    (grad,) = torch.autograd.grad(losses.sum(), chosen, allow_unused=True)
    assert grad is not None and torch.isfinite(grad).all()


@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
def test_dpo_equal_logps(loss_type):
    logps = t(-3.0, -11.0, -0.5)
    lengths = torch.tensor([3, 5, 1])
    losses, cr, rr = dpo_loss(logps, logps, logps, logps, beta=0.5, loss_type=loss_type,
                              chosen_lengths=lengths, rejected_lengths=lengths)
    torch.testing.assert_close(losses, torch.full((3,), EQUAL[loss_type]))
    assert torch.all(cr == 0) and torch.all(rr == 0)


def test_dpo_sigmoid_gradient_sign_and_size():
    chosen, rejected = t(-2.0).requires_grad_(), t(-2.0).requires_grad_()
    losses, _, _ = dpo_loss(chosen, rejected, t(-2.0), t(-2.0), beta=0.5)
    losses.sum().backward()
    torch.testing.assert_close(chosen.grad, t(-0.25))  # -beta * sigmoid(-z), z = 0
    torch.testing.assert_close(rejected.grad, t(0.25))


def test_aot_sorts_the_batch_before_pairing():
    """AOT's losses pair the i-th smallest policy quantity with the i-th smallest reference one (beta = 1):
    ``aot`` the log-odds ``Lc - Lr`` against ``Rc - Rr``, ``aot_unpaired`` the ratios ``dc`` against ``dr``."""
    chosen, rejected = t(-1.0, -4.0, -2.0), t(-3.0, -3.0, -5.0)
    ref_chosen, ref_rejected = t(-2.0, -2.0, -2.0), t(-1.0, -3.0, -2.0)
    # Lc - Lr = (2, -1, 3) -> (-1, 2, 3); Rc - Rr = (-1, 1, 0) -> (-1, 0, 1); differences (0, 2, 2)
    losses, _, _ = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=1.0, loss_type="aot")
    torch.testing.assert_close(losses, t(LN2, -logsig(2.0), -logsig(2.0)))
    # dc = (1, -2, 0) -> (-2, 0, 1); dr = (-2, 0, -3) -> (-3, -2, 0); differences (1, 2, 1)
    losses, _, _ = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=1.0, loss_type="aot_unpaired")
    torch.testing.assert_close(losses, t(-logsig(1.0), -logsig(2.0), -logsig(1.0)))


@pytest.mark.parametrize("divergence, alpha, score", [
    ("reverse_kl", 1.0, lambda x: x),
    ("forward_kl", 1.0, lambda x: -math.exp(-x)),
    ("js_divergence", 1.0, lambda x: logsig(x)),
    ("alpha_divergence", 0.5, lambda x: math.exp(-0.5 * x) / -0.5),
    ("alpha_divergence", 1.0, lambda x: x),
])
def test_f_divergence_scores_replace_the_log_ratios(divergence, alpha, score):
    """f-DPO: sigmoid and sppo_hard read f'(u) of each log ratio; the rewards stay beta times the log ratios."""
    dc, dr, beta = 0.7, -0.4, 0.5
    for loss_type, expected in (("sigmoid", -logsig(beta * (score(dc) - score(dr)))),
                                ("sppo_hard", (score(dc) - 1) ** 2 + (score(dr) + 1) ** 2)):
        losses, cr, rr = dpo_loss(t(dc - 3.0), t(dr - 2.0), t(-3.0), t(-2.0), beta=beta, loss_type=loss_type,
                                  f_divergence_type=divergence, f_alpha_divergence_coef=alpha)
        torch.testing.assert_close(losses, t(expected))
        torch.testing.assert_close(cr, t(beta * dc))
        torch.testing.assert_close(rr, t(beta * dr))
    for loss_type in ("aot", "aot_unpaired", "apo_zero"):
        if divergence != "reverse_kl":
            with pytest.raises(ValueError, match=f"f_divergence_type: loss_type '{loss_type}' compares log ratios"):
                dpo_loss(t(0.0), t(0.0), t(0.0), t(0.0), loss_type=loss_type, f_divergence_type=divergence)


def test_bco_running_mean_shifts_rewards_by_the_mean_of_all_batches():
    running = RunningMean()
    assert running.update(t(1.0, 3.0)) == 2.0
    beta, dc, dr = 1.0, t(1.0), t(-1.0)
    # rewards of this batch: 1 and -1, so the running mean over (1, 3, 1, -1) is 1
    losses, _, _ = dpo_loss(dc, dr, t(0.0), t(0.0), beta=beta, loss_type="bco_pair", bco_running_mean=running)
    assert running.mean == 1.0
    torch.testing.assert_close(losses, t(-logsig(0.0) - logsig(2.0)))
    restored = RunningMean()
    restored.load_state_dict(running.state_dict())
    assert restored.mean == running.mean and restored.count == 4


def test_dpo_rejects_bad_input():
    four, three = torch.zeros(4), torch.zeros(3)
    with pytest.raises(ValueError, match="rejected_logps"):
        dpo_loss(four, three, four, four)
    with pytest.raises(ValueError, match="ref_chosen_logps"):
        dpo_loss(four, four, three, four)
    with pytest.raises(ValueError, match="chosen_logps"):
        dpo_loss(torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(four, four, four, four, loss_type="kto_pair")
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(four, four, four, four, beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(four, four, four, four, label_smoothing=0.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(four, four, four, four, loss_type="hinge", label_smoothing=0.1)
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo_loss(four, four, four, four, loss_type="ipo")
    with pytest.raises(ValueError, match="rejected_lengths"):
        dpo_loss(four, four, four, four, loss_type="ipo", chosen_lengths=torch.ones(4),
                 rejected_lengths=torch.tensor([1, 0, 2, 3]))
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo_loss(four, four, four, four, chosen_lengths=torch.tensor([1, 1, 0, 1]))


def test_cpo_simpo_orpo_hand_computed():
    losses, cr, rr = cpo_loss(t(2 * LN2 - 3.0), t(-3.0), beta=0.5)
    torch.testing.assert_close(losses, t(math.log(1.5)))
    torch.testing.assert_close(cr, t(0.5 * (2 * LN2 - 3.0)))

    # averages -1 and -3: z = 2 * 2 - 1 = 3
    losses, cr, rr = simpo_loss(t(-2.0), t(-3.0), chosen_lengths=torch.tensor([2]),
                                rejected_lengths=torch.tensor([1]), beta=2.0, gamma=1.0, label_smoothing=0.2)
    torch.testing.assert_close(losses, t(-0.8 * logsig(3.0) - 0.2 * logsig(-3.0)))
    torch.testing.assert_close(cr, t(-2.0))
    torch.testing.assert_close(rr, t(-6.0))

    # average chosen prob 1/2 (odds 1), rejected 1/4 (odds 1/3): log odds ratio = ln 3
    losses, cr, rr, log_odds = orpo_loss(t(3 * math.log(0.5)), t(2 * math.log(0.25)),
                                         chosen_lengths=torch.tensor([3]), rejected_lengths=torch.tensor([2]),
                                         beta=0.1)
    torch.testing.assert_close(log_odds, t(LN3))
    torch.testing.assert_close(losses, t(-0.1 * math.log(0.75)))
    torch.testing.assert_close(cr, t(0.1 * math.log(0.5)))


def test_cpo_loss_types_hand_computed():
    """TRL's CPO variants, beta 0.5: hinge on summed logps h = Lc - Lr = 2 ln 2, relu(1 - ln 2); ipo on the
    length-averaged ones (sums 2 ln 2 - 4 over 2 tokens and -2 over 1: h = ln 2), (ln 2 - 1)^2."""
    losses, cr, _ = cpo_loss(t(2 * LN2 - 3.0), t(-3.0), beta=0.5, loss_type="hinge")
    torch.testing.assert_close(losses, t(1 - LN2))
    torch.testing.assert_close(cr, t(0.5 * (2 * LN2 - 3.0)))
    losses, cr, rr = cpo_loss(t(2 * LN2 - 4.0), t(-2.0), beta=0.5, loss_type="ipo",
                              chosen_lengths=torch.tensor([2]), rejected_lengths=torch.tensor([1]))
    torch.testing.assert_close(losses, t((LN2 - 1) ** 2))
    torch.testing.assert_close(cr, t(0.5 * (LN2 - 2.0)))
    torch.testing.assert_close(rr, t(-1.0))
    with pytest.raises(ValueError, match="chosen_lengths: required"):
        cpo_loss(t(0.0), t(0.0), loss_type="ipo")
    with pytest.raises(ValueError, match="label_smoothing: only loss_type sigmoid uses it"):
        cpo_loss(t(0.0), t(0.0), loss_type="hinge", label_smoothing=0.1)
    with pytest.raises(ValueError, match="loss_type"):
        cpo_loss(t(0.0), t(0.0), loss_type="simpo")


def test_alphapo_reshapes_the_rewards_of_cpo_and_simpo():
    """AlphaPO's r = (1 - p^-alpha) / alpha with p = e^L: alpha -1 gives p - 1, alpha 1 gives 1 - 1/p, and alpha
    -> 0 the log reward; CPO and SimPO compare (and log) these rewards."""
    logps = t(math.log(0.5), math.log(0.25))
    torch.testing.assert_close(alphapo_rewards(logps, -1.0), t(-0.5, -0.75))
    torch.testing.assert_close(alphapo_rewards(logps, 1.0), t(-1.0, -3.0))
    torch.testing.assert_close(alphapo_rewards(logps, 1e-6), logps, rtol=1e-5, atol=1e-6)
    assert torch.equal(alphapo_rewards(logps, 0.0), logps)

    # alpha 1: r_c = 1 - 2 = -1, r_r = 1 - 4 = -3; beta 0.5: sigmoid loss -logsig(1)
    losses, cr, rr = cpo_loss(t(math.log(0.5)), t(math.log(0.25)), beta=0.5, alpha=1.0)
    torch.testing.assert_close(losses, t(-logsig(1.0)))
    torch.testing.assert_close(cr, t(-0.5))
    torch.testing.assert_close(rr, t(-1.5))
    # SimPO on the averages ln(1/2) (sum 2 ln(1/2) over 2 tokens) and ln(1/4); alpha -1: r = -1/2, -3/4;
    # beta 2, gamma 0.25: z = 2 * 0.25 - 0.25
    losses, cr, rr = simpo_loss(t(2 * math.log(0.5)), t(math.log(0.25)), chosen_lengths=torch.tensor([2]),
                                rejected_lengths=torch.tensor([1]), beta=2.0, gamma=0.25, alpha=-1.0)
    torch.testing.assert_close(losses, t(-logsig(0.25)))
    torch.testing.assert_close(cr, t(-1.0))
    torch.testing.assert_close(rr, t(-1.5))
    chosen = t(2 * math.log(0.5)).requires_grad_()
    simpo_loss(chosen, t(math.log(0.25)), chosen_lengths=torch.tensor([2]), rejected_lengths=torch.tensor([1]),
               beta=2.0, gamma=0.25, alpha=-1.0)[0].sum().backward()
    # d/dL of -logsig(2 (e^(L/2) - 1) - ...) at L = 2 ln(1/2): -sigmoid(-0.25) * 2 * e^(L/2) / 2
    torch.testing.assert_close(chosen.grad, t(-(1 - 1 / (1 + math.exp(-0.25))) * 0.5))


def test_log1mexp_is_accurate_at_both_ends():
    # fp32, where the naive log(1 - exp(x)) gives -inf near 0 and 0 far below it
    values = [-1e-9, -1e-4, -0.5, -0.7, -5.0, -30.0]
    expected = [math.log(-math.expm1(v)) if v > -1 else math.log1p(-math.exp(v)) for v in values]
    got = log1mexp(torch.tensor(values))
    torch.testing.assert_close(got.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0)


def test_simpo_orpo_reject_zero_lengths():
    with pytest.raises(ValueError, match="chosen_lengths"):
        simpo_loss(t(-1.0, -2.0), t(-1.0, -2.0), chosen_lengths=torch.tensor([0, 1]),
                   rejected_lengths=torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="rejected_lengths"):
        orpo_loss(t(-1.0, -2.0), t(-1.0, -2.0), chosen_lengths=torch.tensor([1, 1]),
                  rejected_lengths=torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="rejected_logps"):
        cpo_loss(t(-1.0, -2.0), t(-1.0))


def test_reward_model_loss_margin_and_centering():
    chosen, rejected = t(2.0, 0.0).requires_grad_(), t(1.0, 1.0)
    losses, cr, rr = reward_model_loss(chosen, rejected, margin=t(0.5, 0.0), center_rewards_coefficient=0.1)
    torch.testing.assert_close(losses, t(-logsig(0.5) + 0.1 * 9.0, -logsig(-1.0) + 0.1 * 1.0))
    losses.sum().backward()
    torch.testing.assert_close(chosen.grad, t(-1 / (1 + math.exp(0.5)) + 0.6, -1 / (1 + math.exp(-1.0)) + 0.2))
    metrics = preference_metrics(cr, rr)
    assert set(metrics) == {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"}
    torch.testing.assert_close(metrics["rewards/accuracies"], t(0.5)[0])
    torch.testing.assert_close(metrics["rewards/margins"], t(0.0)[0])
    plain, _, _ = reward_model_loss(t(1.0), t(1.0), margin=1.0)
    torch.testing.assert_close(plain, t(-logsig(-1.0)))
    with pytest.raises(ValueError, match="margin"):
        reward_model_loss(t(1.0, 2.0), t(1.0, 2.0), margin=t(1.0))


def test_kto_hand_computed_with_detached_clamped_kl():
    logps = t(1.0, -1.0).requires_grad_()
    kl_logps = t(0.5, 0.3).requires_grad_()
    desirable = torch.tensor([True, False])
    losses, rewards, kl = kto_loss(logps, t(0.0, 0.0), kl_logps, t(0.0, 0.0), desirable, beta=1.0,
                                   desirable_weight=2.0, undesirable_weight=0.5)
    torch.testing.assert_close(kl, t(0.4)[0])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    torch.testing.assert_close(losses, t(2.0 * (1 - sig(0.6)), 0.5 * (1 - sig(1.4))))
    torch.testing.assert_close(rewards, t(1.0, -1.0))
    losses.sum().backward()
    assert kl_logps.grad is None
    _, _, clamped = kto_loss(logps, t(0.0, 0.0), t(-0.5, -0.3), t(0.0, 0.0), desirable)
    assert clamped.item() == 0.0
    metrics = kto_metrics(rewards, logps, desirable, kl)
    assert set(metrics) == {"kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
                            "logps/rejected"}
    torch.testing.assert_close(metrics["rewards/margins"], t(2.0)[0])
    assert set(kto_metrics(rewards, logps, torch.tensor([True, True]), kl)) == {"kl", "rewards/chosen",
                                                                                  "logps/chosen"}


def test_kto_apo_zero_unpaired_hand_computed():
    """APO's zero anchor on unpaired rows: desirable rows lose wD (1 - sig(b d)), undesirable ones wU sig(b d);
    no KL baseline (None in, None out), and a single row is a batch."""
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    losses, rewards, kl = kto_loss(t(1.0, -1.0), t(0.0, 0.5), None, None, torch.tensor([True, False]), beta=2.0,
                                   desirable_weight=2.0, undesirable_weight=0.5, loss_type="apo_zero_unpaired")
    torch.testing.assert_close(losses, t(2.0 * (1 - sig(2.0)), 0.5 * sig(-3.0)))
    torch.testing.assert_close(rewards, t(2.0, -3.0))
    assert kl is None and "kl" not in kto_metrics(rewards, t(1.0, -1.0), torch.tensor([True, False]), kl)
    losses, _, _ = kto_loss(t(1.0), t(0.0), None, None, torch.tensor([True]), loss_type="apo_zero_unpaired")
    assert losses.shape == (1,)
    with pytest.raises(ValueError, match="kl_logps: loss_type kto needs kl_logps"):
        kto_loss(t(1.0, 2.0), t(1.0, 2.0), None, None, torch.tensor([True, False]))
    with pytest.raises(ValueError, match="loss_type"):
        kto_loss(t(1.0, 2.0), t(1.0, 2.0), None, None, torch.tensor([True, False]), loss_type="apo_zero")


def test_kto_bco_shifts_the_rewards_by_their_running_mean():
    """BCO on unpaired rows (TRL's BCOTrainer): each batch's rewards join the running mean before it shifts them;
    desirable rows lose -wD log sig(r - delta), undesirable ones -wU log sig(delta - r)."""
    running = RunningMean()
    logps = t(1.0, -1.0, 0.5).requires_grad_()
    losses, rewards, delta = kto_loss(logps, t(0.0, 0.0, 0.0), None, None, torch.tensor([True, False, True]),
                                      beta=2.0, desirable_weight=1.5, loss_type="bco", bco_running_mean=running)
    torch.testing.assert_close(rewards, t(2.0, -2.0, 1.0))
    assert delta.item() == pytest.approx(1.0 / 3) and running.mean == pytest.approx(1.0 / 3)
    logsig = lambda x: -math.log1p(math.exp(-x))  # noqa: E731
    torch.testing.assert_close(losses, t(-1.5 * logsig(2.0 - 1 / 3), -logsig(1 / 3 + 2.0), -1.5 * logsig(1.0 - 1 / 3)))
    (grad,) = torch.autograd.grad(losses.sum(), logps)  # delta is a constant: d/dL = -w b sig(-(r - delta))
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    torch.testing.assert_close(grad, t(-1.5 * 2 * sig(-(2.0 - 1 / 3)), 2 * sig(-(1 / 3 + 2.0)),
                                       -1.5 * 2 * sig(-(1.0 - 1 / 3))))
    _, _, second = kto_loss(t(4.0), t(0.0), None, None, torch.tensor([False]), beta=1.0, loss_type="bco",
                            bco_running_mean=running)
    assert second.item() == pytest.approx((1.0 + 4.0) / 4) and running.count == 4  # every reward so far
    _, _, fresh = kto_loss(t(4.0, 2.0), t(0.0, 0.0), None, None, torch.tensor([True, False]), loss_type="bco")
    assert fresh.item() == pytest.approx(0.3)  # no running mean: this batch's mean reward
    assert "delta" not in kto_metrics(rewards, logps, torch.tensor([True, False, True]), None)
    with pytest.raises(ValueError, match="bco_running_mean: only loss_type bco"):
        kto_loss(t(1.0), t(0.0), None, None, torch.tensor([True]), loss_type="apo_zero_unpaired",
                 bco_running_mean=RunningMean())


def test_kto_rejects_bad_input():
    with pytest.raises(ValueError, match="logps: KTO needs a batch of at least 2"):
        kto_loss(t(1.0), t(1.0), t(1.0), t(1.0), torch.tensor([True]))
    with pytest.raises(ValueError, match="kl_logps"):
        kto_loss(t(1.0, 2.0), t(1.0, 2.0), t(1.0), t(1.0, 2.0), torch.tensor([True, False]))
    with pytest.raises(ValueError, match="desirable"):
        kto_loss(t(1.0, 2.0), t(1.0, 2.0), t(1.0, 2.0), t(1.0, 2.0), torch.tensor([1, 0]))


def test_kto_balance_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_kto_balance(110, 100)
    with pytest.warns(UserWarning, match="outside"):
        check_kto_balance(100, 300)
    with pytest.warns(UserWarning, match="needs both"):
        check_kto_balance(10, 0)


def test_orpo_gradient_is_finite_when_a_logp_is_exactly_zero():
    """An average logprob of 0 (every chosen token certain) must not turn the step into NaNs."""
    chosen = torch.tensor([0.0, -0.5], requires_grad=True)
    rejected = torch.tensor([-1.0, -2.0], requires_grad=True)
    lengths = torch.tensor([3.0, 4.0])
    losses, *_ = orpo_loss(chosen, rejected, chosen_lengths=lengths, rejected_lengths=lengths)
    losses.sum().backward()
    assert torch.isfinite(losses).all()
    assert torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()
