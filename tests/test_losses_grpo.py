"""GRPO advantages and loss: hand-computed aggregations, clipping, KL and bad input."""
import math

import pytest
import torch

from fusedrl.kernels.losses import GRPO_LOSS_TYPES, grpo_advantages, grpo_loss


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_group_advantages_with_weighted_functions_and_none():
    rewards = {"accuracy": [1.0, 0.0, None, 1.0], "format": torch.tensor([0.5, 0.5, 1.0, 1.0])}
    adv, metrics = grpo_advantages(rewards, num_generations=2, reward_weights=[2.0, 1.0])
    # combined rewards: 2.5, 0.5 | 1.0 (accuracy None is left out), 3.0
    std_a, std_b = math.sqrt(2.0), math.sqrt(2.0)
    torch.testing.assert_close(adv, t(1.0 / (std_a + 1e-4), -1.0 / (std_a + 1e-4),
                                      -1.0 / (std_b + 1e-4), 1.0 / (std_b + 1e-4)))
    assert set(metrics) == {"reward", "reward_std", "frac_reward_zero_std", "rewards/accuracy/mean",
                            "rewards/format/mean"}
    torch.testing.assert_close(metrics["reward"], torch.tensor(7.0 / 4))
    torch.testing.assert_close(metrics["reward_std"], torch.tensor(math.sqrt(2.0)))
    torch.testing.assert_close(metrics["rewards/accuracy/mean"], torch.tensor(2.0 / 3))
    torch.testing.assert_close(metrics["rewards/format/mean"], torch.tensor(0.75))
    assert metrics["frac_reward_zero_std"].item() == 0.0


def test_advantage_scaling_modes():
    rewards = {"r": [1.0, 3.0, 5.0, 5.0]}
    adv, metrics = grpo_advantages(rewards, num_generations=2, scale_rewards="none")
    torch.testing.assert_close(adv, t(-1.0, 1.0, 0.0, 0.0))
    assert metrics["frac_reward_zero_std"].item() == 0.5
    adv, _ = grpo_advantages(rewards, num_generations=2, scale_rewards="batch")
    batch_std = torch.tensor([1.0, 3.0, 5.0, 5.0]).std()
    torch.testing.assert_close(adv, t(-1.0, 1.0, 0.0, 0.0) / (batch_std + 1e-4))
    adv, _ = grpo_advantages(rewards, num_generations=2)
    torch.testing.assert_close(adv, t(-1.0, 1.0, 0.0, 0.0) / t(math.sqrt(2) + 1e-4, math.sqrt(2) + 1e-4, 1e-4, 1e-4))


def test_grpo_advantages_reject_bad_input():
    with pytest.raises(ValueError, match="num_generations"):
        grpo_advantages({"r": [1.0, 2.0, 3.0]}, num_generations=2)
    with pytest.raises(ValueError, match="num_generations"):
        grpo_advantages({"r": [1.0, 2.0]}, num_generations=1)
    with pytest.raises(ValueError, match="reward_weights"):
        grpo_advantages({"r": [1.0, 2.0]}, num_generations=2, reward_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="rewards\\['b'\\]"):
        grpo_advantages({"a": [1.0, 2.0], "b": [1.0]}, num_generations=2)
    with pytest.raises(ValueError, match="scale_rewards"):
        grpo_advantages({"a": [1.0, 2.0]}, num_generations=2, scale_rewards="std")
    with pytest.raises(ValueError, match="rewards"):
        grpo_advantages({}, num_generations=2)


# Two rows with 2 and 4 completion tokens, rho = 1 everywhere, beta = 0: the token loss is -A.
MASK = torch.tensor([[False, True, True, False, False], [True, True, True, True, False]])
ADV = t(1.0, -2.0)
AGGREGATIONS = {
    "grpo": ((-1.0 * 2 / 2 + 2.0 * 4 / 4) / 2, dict()),
    "bnpo": ((-2.0 + 8.0) / 6, dict()),
    "dr_grpo": ((-2.0 + 8.0) / (2 * 5), dict()),
    "dapo": ((-2.0 + 8.0) / 12, dict(num_items_in_batch=12)),
    "luspo": ((-2.0 + 8.0) / 2, dict(importance_sampling_level="sequence")),  # each row's token losses summed
}


def test_aggregation_table_covers_every_loss_type():
    assert set(AGGREGATIONS) == set(GRPO_LOSS_TYPES) - {"cispo", "sapo", "vespo"}  # they change the token loss


@pytest.mark.parametrize("loss_type", list(AGGREGATIONS))
def test_grpo_aggregations_hand_computed(loss_type):
    expected, kw = AGGREGATIONS[loss_type]
    logps = torch.randn(2, 5).requires_grad_()
    loss, metrics = grpo_loss(logps, None, ADV, MASK, beta=0.0, loss_type=loss_type, **kw)
    torch.testing.assert_close(loss, torch.tensor(expected))
    assert set(metrics) == {"clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"}
    (grad,) = torch.autograd.grad(loss, logps)
    assert torch.all(grad[~MASK] == 0)
    # d loss / d L_t = -A_i * (weight of token t): for grpo 1 / (|o_i| * B), for bnpo 1 / tokens
    if loss_type == "grpo":
        torch.testing.assert_close(grad[MASK], t(-0.25, -0.25, 0.25, 0.25, 0.25, 0.25))
    if loss_type == "bnpo":
        torch.testing.assert_close(grad[MASK], t(-1, -1, 2, 2, 2, 2) / 6)
    if loss_type == "luspo":
        torch.testing.assert_close(grad[MASK], t(-1 / 2, -1 / 2, 1, 1, 1, 1))


def test_dr_grpo_uses_max_completion_length_and_dapo_defaults_to_batch_tokens():
    logps = torch.randn(2, 5)
    loss, _ = grpo_loss(logps, None, ADV, MASK, beta=0.0, loss_type="dr_grpo", max_completion_length=10)
    torch.testing.assert_close(loss, torch.tensor(6.0 / 20))
    loss, _ = grpo_loss(logps, None, ADV, MASK, beta=0.0, loss_type="dapo")
    torch.testing.assert_close(loss, torch.tensor(1.0))


def test_clipped_ratio_gives_zero_gradient_and_counts_in_the_metrics():
    mask = torch.ones(1, 4, dtype=torch.bool)
    old = torch.zeros(1, 4)
    # ratios 1.5 (A>0: clipped high), 0.5 (A<0: clipped low), 1.1 (inside), 3.0 (A<0, capped by delta)
    logps = torch.log(t([1.5, 0.5, 1.1, 3.0])).requires_grad_()
    adv_pos, adv_neg = t(1.0), t(-1.0)
    loss, metrics = grpo_loss(logps[:, :1], old[:, :1], adv_pos, mask[:, :1], beta=0.0)
    (grad,) = torch.autograd.grad(loss, logps)
    assert torch.all(grad == 0)
    torch.testing.assert_close(loss, torch.tensor(-1.2))
    assert metrics["clip_ratio/high_mean"].item() == 1.0 and metrics["clip_ratio/low_mean"].item() == 0.0

    loss, metrics = grpo_loss(logps[:, 1:2], old[:, 1:2], adv_neg, mask[:, :1], beta=0.0)
    (grad,) = torch.autograd.grad(loss, logps)
    assert torch.all(grad == 0)
    torch.testing.assert_close(loss, torch.tensor(0.8))
    assert metrics["clip_ratio/low_mean"].item() == 1.0 and metrics["clip_ratio/region_mean"].item() == 1.0

    loss, _ = grpo_loss(logps[:, 2:3], old[:, 2:3], adv_pos, mask[:, :1], beta=0.0)
    (grad,) = torch.autograd.grad(loss, logps)
    torch.testing.assert_close(grad, t([0.0, 0.0, -1.1, 0.0]))

    # delta caps the unclipped term: -min(min(3, 2) * -1, 1.2 * -1) = 2, no gradient
    loss, _ = grpo_loss(logps[:, 3:], old[:, 3:], adv_neg, mask[:, :1], beta=0.0, delta=2.0)
    (grad,) = torch.autograd.grad(loss, logps)
    torch.testing.assert_close(loss, torch.tensor(2.0))
    assert torch.all(grad == 0)
    loss, _ = grpo_loss(logps[:, 3:], old[:, 3:], adv_neg, mask[:, :1], beta=0.0)
    torch.testing.assert_close(loss, torch.tensor(3.0))


def test_epsilon_high_widens_the_upper_clip_only():
    mask = torch.ones(1, 1, dtype=torch.bool)
    logps = torch.log(t([1.25]))
    loss, _ = grpo_loss(logps, torch.zeros(1, 1), t(1.0), mask, beta=0.0, epsilon=0.2, epsilon_high=0.28)
    torch.testing.assert_close(loss, torch.tensor(-1.25))
    loss, _ = grpo_loss(torch.log(t([0.75])), torch.zeros(1, 1), t(-1.0), mask, beta=0.0, epsilon=0.2,
                        epsilon_high=0.28)
    torch.testing.assert_close(loss, torch.tensor(0.8))


def test_sequence_level_ratio_is_one_per_row():
    mask = torch.tensor([[True, True, False]])
    logps = t([math.log(2.0), 0.0, 5.0]).requires_grad_()
    loss, metrics = grpo_loss(logps, torch.zeros(1, 3), t(1.0), mask, beta=0.0,
                              importance_sampling_level="sequence", epsilon=0.5)
    rho = math.exp(math.log(2.0) / 2)
    torch.testing.assert_close(loss, torch.tensor(-rho))
    (grad,) = torch.autograd.grad(loss, logps)
    torch.testing.assert_close(grad, t([-rho / 2, -rho / 2, 0.0]))
    assert metrics["clip_ratio/region_mean"].item() == 0.0


def test_k3_kl_penalty_with_beta():
    mask = torch.tensor([[True, True, False]])
    logps = t([-1.0, -2.0, -3.0]).requires_grad_()
    ref = t([-1.5, -1.0, 100.0])
    loss, metrics = grpo_loss(logps, None, t(0.0), mask, ref_logps=ref, beta=0.1)
    k3 = [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1]
    torch.testing.assert_close(metrics["kl"], torch.tensor(sum(k3) / 2))
    torch.testing.assert_close(loss, torch.tensor(0.1 * sum(k3) / 2))
    (grad,) = torch.autograd.grad(loss, logps)
    # d k3 / d L = 1 - e^(R - L)
    torch.testing.assert_close(grad, t([0.05 * (1 - math.exp(-0.5)), 0.05 * (1 - math.exp(1.0)), 0.0]))


def test_top_entropy_quantile_trains_the_uncertain_tokens_only():
    """rho = 0.5 over six completion tokens: the threshold is the median entropy (2.5, between the 3rd and 4th
    order statistics), so the policy term reaches the three most uncertain tokens; the KL term reaches every
    token and the grpo aggregation still divides by each row's full length. rho = 1 is the plain loss; rho = 0
    keeps only the most uncertain token."""
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    mask[1, 3] = False
    entropy = t([0.5, 3.0, 2.0, 9.0], [4.0, 1.0, 5.0, 9.0])
    logps = t([-1.0, -2.0, -3.0, -4.0], [-1.5, -1.0, -0.5, -2.0]).requires_grad_()
    ref = logps.detach() + 0.3
    adv = t(1.0, -2.0)
    loss, _ = grpo_loss(logps, None, adv, mask, ref_logps=ref, beta=0.1, entropy=entropy, top_entropy_quantile=0.5)
    (grad,) = torch.autograd.grad(loss, logps)
    kl_grad = 0.1 * (1 - math.exp(0.3)) / (3 * 2)  # d k3 / d L, over 3 tokens a row and 2 rows
    policy = torch.tensor([[0.0, -1.0, 0.0, 0.0], [2.0, 0.0, 2.0, 0.0]]) / (3 * 2)  # -A / |o_i| / rows
    torch.testing.assert_close(grad, (policy + kl_grad) * mask)
    plain, _ = grpo_loss(logps, None, adv, mask, ref_logps=ref, beta=0.1)
    for everything in (None, entropy):
        torch.testing.assert_close(grpo_loss(logps, None, adv, mask, ref_logps=ref, beta=0.1, entropy=everything,
                                             top_entropy_quantile=1.0)[0], plain)
    loss, _ = grpo_loss(logps, None, adv, mask, beta=0.0, entropy=entropy, top_entropy_quantile=0.0)
    (grad,) = torch.autograd.grad(loss, logps)
    assert grad.nonzero().tolist() == [[1, 2]]  # entropy 5.0, the highest among the completion tokens
    with pytest.raises(ValueError, match="entropy: required when top_entropy_quantile < 1"):
        grpo_loss(logps, None, adv, mask, beta=0.0, top_entropy_quantile=0.5)
    with pytest.raises(ValueError, match="top_entropy_quantile"):
        grpo_loss(logps, None, adv, mask, beta=0.0, entropy=entropy, top_entropy_quantile=1.5)
    with pytest.raises(ValueError, match="entropy"):
        grpo_loss(logps, None, adv, mask, beta=0.0, entropy=entropy[:, :2], top_entropy_quantile=0.5)


def test_cispo_weighs_every_token_by_its_capped_ratio_without_its_gradient():
    """CISPO's token loss is ``-min(rho, 1 + eps_high) * A * L_t`` with the weight detached, summed over the
    batch's tokens (as dapo): a token GRPO's clip would silence (rho 0.5 with A < 0, rho 1.5 with A > 0) still
    gets ``-w * A`` of gradient, with its weight capped at 1.28; the metrics count the capped tokens."""
    mask = torch.tensor([[True, True, True, False]])
    old = torch.zeros(1, 4)
    logps = torch.log(t([1.5, 0.5, 1.1, 7.0])).requires_grad_()
    for adv, weights in ((t(2.0), [1.28, 0.5, 1.1]), (t(-2.0), [1.28, 0.5, 1.1])):
        loss, metrics = grpo_loss(logps, old, adv, mask, beta=0.0, loss_type="cispo", epsilon_high=0.28,
                                  num_items_in_batch=3)
        expected = -sum(w * float(adv) * math.log(r) for w, r in zip(weights, (1.5, 0.5, 1.1))) / 3
        torch.testing.assert_close(loss, torch.tensor(expected))
        (grad,) = torch.autograd.grad(loss, logps)
        torch.testing.assert_close(grad, t([-w * float(adv) / 3 for w in weights] + [0.0]))
        assert metrics["clip_ratio/high_mean"].item() == pytest.approx(1 / 3)
        assert metrics["clip_ratio/low_mean"].item() == 0.0
    with pytest.raises(ValueError, match="delta: loss_type cispo has no unclipped importance-weight term"):
        grpo_loss(logps, old, t(1.0), mask, beta=0.0, loss_type="cispo", delta=2.0)


def test_sapo_gates_each_token_softly_by_the_sign_of_its_advantage():
    """SAPO's token loss is ``-sigmoid(tau (rho - 1)) * 4 / tau * A`` (tau 1.0 where A > 0, 1.05 elsewhere by
    default), aggregated as grpo. Its gradient w.r.t. the logprob is ``-4 s (1 - s) rho A`` with
    ``s = sigmoid(tau (rho - 1))``: exactly ``-A`` on-policy, smaller (never zero) away from rho = 1, where a hard
    clip would give nothing."""
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    rho = [[1.0, 3.0, 0.4, 1.0], [1.0, 2.5, 1.0, 1.0]]
    logps = torch.log(torch.tensor(rho)).requires_grad_()
    adv = t(2.0, -1.5)
    loss, metrics = grpo_loss(logps, torch.zeros(2, 4), adv, mask, beta=0.0, loss_type="sapo",
                              sapo_temperature_pos=1.0, sapo_temperature_neg=2.0)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    token_loss = [[-sig(tau * (r - 1)) * 4 / tau * a for r in row] for row, a, tau in zip(rho, (2.0, -1.5), (1.0, 2.0))]
    expected = (sum(token_loss[0][:3]) / 3 + sum(token_loss[1][:2]) / 2) / 2
    torch.testing.assert_close(loss, torch.tensor(expected))
    (grad,) = torch.autograd.grad(loss, logps)
    want = [[-4 * sig(tau * (r - 1)) * (1 - sig(tau * (r - 1))) * r * a / n * keep for r, keep in zip(row, keeps)]
            for row, a, tau, n, keeps in zip(rho, (2.0, -1.5), (1.0, 2.0), (3, 2), mask.tolist())]
    torch.testing.assert_close(grad, torch.tensor(want) / 2)
    assert grad[0, 0] == pytest.approx(-2.0 / 3 / 2) and grad[0, 1] != 0 and grad[1, 1] != 0
    assert metrics["clip_ratio/region_mean"].item() == 0.0
    with pytest.raises(ValueError, match="sapo_temperature_neg"):
        grpo_loss(logps, None, adv, mask, beta=0.0, loss_type="sapo", sapo_temperature_neg=0.0)


def test_vespo_weighs_each_completion_by_a_gamma_function_of_its_ratio():
    """VESPO's token loss is ``-sg(phi(w)) * A * L_t`` with ``w`` the completion's ratio (the product of its
    token ratios) and ``phi(w) = e^(lam + k log w - lam w)`` (k, lam by the sign of A), summed over the batch's
    tokens (as dapo). On-policy phi(1) = 1: the plain policy gradient."""
    mask = torch.tensor([[True, True, False], [True, True, True]])
    logps = torch.log(torch.tensor([[1.2, 1.5, 1.0], [0.5, 0.8, 1.0]])).requires_grad_()
    adv = t(1.5, -2.0)
    loss, metrics = grpo_loss(logps, torch.zeros(2, 3), adv, mask, beta=0.0, loss_type="vespo", vespo_k_pos=2.0,
                              vespo_lambda_pos=3.0, vespo_k_neg=1.5, vespo_lambda_neg=0.5, num_items_in_batch=5)
    phi = [math.exp(lam + k * math.log(w) - lam * w) for w, k, lam in ((1.8, 2.0, 3.0), (0.4, 1.5, 0.5))]
    expected = -(phi[0] * 1.5 * math.log(1.8) + phi[1] * -2.0 * math.log(0.4)) / 5
    torch.testing.assert_close(loss, torch.tensor(expected))
    (grad,) = torch.autograd.grad(loss, logps)
    torch.testing.assert_close(grad, torch.tensor([[-phi[0] * 1.5] * 2 + [0.0], [phi[1] * 2.0] * 3]) / 5)
    assert metrics["clip_ratio/region_mean"].item() == 0.0
    on_policy, _ = grpo_loss(logps, None, adv, mask, beta=0.0, loss_type="vespo", num_items_in_batch=5)
    torch.testing.assert_close(on_policy, -(1.5 * logps[0, :2].sum() - 2.0 * logps[1].sum()) / 5)
    with pytest.raises(ValueError, match="importance_sampling_level: loss_type vespo needs token"):
        grpo_loss(logps, None, adv, mask, beta=0.0, loss_type="vespo", importance_sampling_level="sequence")
    with pytest.raises(ValueError, match="importance_sampling_level: loss_type luspo needs sequence"):
        grpo_loss(logps, None, adv, mask, beta=0.0, loss_type="luspo")
    with pytest.raises(ValueError, match="delta: loss_type vespo"):
        grpo_loss(logps, None, adv, mask, beta=0.0, loss_type="vespo", delta=2.0)


def test_normalize_then_sum_normalises_each_reward_in_its_group_first():
    """GDPO (multi_objective_aggregation normalize_then_sum): each function is normalised within each group over
    the samples it scored, the weighted sum is then centred and scaled over the batch; scale_rewards is unread."""
    rewards = {"accuracy": [1.0, 0.0, 1.0, None, 0.0, 1.0], "format": [10.0, 30.0, 20.0, 5.0, 5.0, 5.0]}
    adv, metrics = grpo_advantages(rewards, num_generations=3, reward_weights=[1.0, 0.5],
                                   multi_objective_aggregation="normalize_then_sum", scale_rewards="none")
    std_acc = torch.tensor([1.0, 0.0, 1.0]).std().item()
    acc = [(1 - 2 / 3) / (std_acc + 1e-4), (0 - 2 / 3) / (std_acc + 1e-4), (1 - 2 / 3) / (std_acc + 1e-4),
           0.0, -0.5 / (math.sqrt(0.5) + 1e-4), 0.5 / (math.sqrt(0.5) + 1e-4)]  # None: left out of the sum
    fmt = [-10 / (10 + 1e-4), 10 / (10 + 1e-4), 0.0, 0.0, 0.0, 0.0]  # format is constant in the second group
    summed = torch.tensor([a + 0.5 * f for a, f in zip(acc, fmt)])
    torch.testing.assert_close(adv, (summed - summed.mean()) / (summed.std() + 1e-4))
    _, plain_metrics = grpo_advantages(rewards, num_generations=3, reward_weights=[1.0, 0.5])
    assert metrics.keys() == plain_metrics.keys()
    torch.testing.assert_close(metrics["reward"], plain_metrics["reward"])  # the weighted sum, as before
    with pytest.raises(ValueError, match="multi_objective_aggregation"):
        grpo_advantages(rewards, num_generations=3, multi_objective_aggregation="sum")


def test_grpo_loss_rejects_bad_input():
    mask = torch.ones(2, 3, dtype=torch.bool)
    logps = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(logps, None, t(1.0, 1.0), mask)
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logps, None, t(1.0), mask, beta=0.0)
    with pytest.raises(ValueError, match="old_logps"):
        grpo_loss(logps, torch.zeros(3, 3), t(1.0, 1.0), mask, beta=0.0)
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(logps, None, t(1.0, 1.0), mask, beta=0.0, loss_type="ppo")
    with pytest.raises(ValueError, match="importance_sampling_level"):
        grpo_loss(logps, None, t(1.0, 1.0), mask, beta=0.0, importance_sampling_level="batch")
    with pytest.raises(ValueError, match="delta"):
        grpo_loss(logps, None, t(1.0, 1.0), mask, beta=0.0, delta=1.1)
    with pytest.raises(ValueError, match="epsilon"):
        grpo_loss(logps, None, t(1.0, 1.0), mask, beta=0.0, epsilon=-0.1)


def test_deepseek_v32_off_policy_mask_and_unbiased_kl():
    """Off-policy sequence masking drops the policy term of a negative-advantage completion whose mean drift
    ``L_old - L`` exceeds the threshold (ln 2 > 0.1 here) and keeps a positive-advantage one; the unbiased KL
    is ``rho * k3`` with its gradient ``rho * L`` per token (old = ref = 0, L = log rho)."""
    mask = torch.ones(2, 2, dtype=torch.bool)
    old = torch.zeros(2, 2)
    logps = torch.full((2, 2), math.log(0.5)).requires_grad_()
    loss, _ = grpo_loss(logps, old, t(1.0, -1.0), mask, beta=0.0, off_policy_mask_threshold=0.1)
    torch.testing.assert_close(loss, torch.tensor(-0.25))  # row 1: -min(0.5, 0.8) per token; row 2 masked
    (grad,) = torch.autograd.grad(loss, logps)
    assert torch.all(grad[1] == 0) and torch.all(grad[0] != 0)
    loss, _ = grpo_loss(logps, old, t(1.0, -1.0), mask, beta=0.0, off_policy_mask_threshold=1.0)
    torch.testing.assert_close(loss, torch.tensor(0.15))  # both kept: row 2 gives -min(-0.5, -0.8) = 0.8
    loss, metrics = grpo_loss(logps, old, t(0.0, 0.0), mask, ref_logps=torch.zeros(2, 2), beta=1.0,
                              use_bias_correction_kl=True)
    k3 = 2.0 + math.log(0.5) - 1.0
    torch.testing.assert_close(loss, torch.tensor(0.5 * k3))
    torch.testing.assert_close(metrics["kl"], torch.tensor(k3))
    (grad,) = torch.autograd.grad(loss, logps)
    torch.testing.assert_close(grad, torch.full((2, 2), 0.5 * math.log(0.5) / 2 / 2))
