"""RLOO advantages and loss: hand-computed leave-one-out baselines, KL shaping, clipping and bad input."""
import math

import pytest
import torch

from fusedrl.kernels.losses import rloo_advantages, rloo_loss


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_leave_one_out_baseline_is_the_mean_of_the_others():
    rewards = {"accuracy": [1.0, 0.0, None, 1.0, 0.0, 0.0], "format": torch.tensor([0.5, 0.5, 1.0, 1.0, 0.0, 0.5])}
    adv, metrics = rloo_advantages(rewards, num_generations=3, reward_weights=[2.0, 1.0], beta=0.0)
    # weighted rewards: 2.5, 0.5, 1.0 (accuracy None is left out) | 3.0, 0.0, 0.5
    torch.testing.assert_close(adv, t(2.5 - 0.75, 0.5 - 1.75, 1.0 - 1.5, 3.0 - 0.25, 0.0 - 1.75, 0.5 - 1.5))
    torch.testing.assert_close(adv.view(2, 3), 1.5 * (t(2.5, 0.5, 1.0, 3.0, 0.0, 0.5).view(2, 3)
                                                      - t(4.0 / 3, 7.0 / 6)[:, None]))  # G/(G-1) (r - mean)
    assert set(metrics) == {"reward", "reward_std", "frac_reward_zero_std", "rewards/accuracy/mean",
                            "rewards/format/mean"}
    torch.testing.assert_close(metrics["reward"], torch.tensor(7.5 / 6))
    torch.testing.assert_close(metrics["reward_std"], t(2.5, 0.5, 1.0, 3.0, 0.0, 0.5).std())
    torch.testing.assert_close(metrics["rewards/accuracy/mean"], torch.tensor(2.0 / 5))
    assert metrics["frac_reward_zero_std"].item() == 0.0


def test_kl_penalty_is_subtracted_from_the_reward_before_the_baseline():
    rewards = {"r": [1.0, 1.0, 0.0, 2.0]}
    kl = t(0.0, 4.0, 1.0, 1.0)
    adv, metrics = rloo_advantages(rewards, num_generations=2, sequence_kl=kl, beta=0.25)
    # shaped: 1.0, 0.0 | -0.25, 1.75
    torch.testing.assert_close(adv, t(1.0, -1.0, -2.0, 2.0))
    torch.testing.assert_close(metrics["kl_penalty"], torch.tensor(0.25 * 6.0 / 4))
    torch.testing.assert_close(metrics["reward"], torch.tensor(1.0))  # the reward as scored, before the KL
    adv_plain, metrics_plain = rloo_advantages(rewards, num_generations=2, beta=0.0)
    torch.testing.assert_close(adv_plain, t(0.0, 0.0, -2.0, 2.0))
    assert metrics_plain["frac_reward_zero_std"].item() == 0.5 and metrics["frac_reward_zero_std"].item() == 0.0
    assert "kl_penalty" not in metrics_plain


def test_reward_clip_range_and_batch_normalisation():
    rewards = {"r": [5.0, -3.0, 0.5, 0.0]}
    adv, metrics = rloo_advantages(rewards, num_generations=2, beta=0.0, reward_clip_range=[-1.0, 1.0])
    torch.testing.assert_close(adv, t(2.0, -2.0, 0.5, -0.5))
    torch.testing.assert_close(metrics["reward"], torch.tensor(2.5 / 4))  # logged unclipped
    normalised, _ = rloo_advantages(rewards, num_generations=2, beta=0.0, reward_clip_range=(-1.0, 1.0),
                                    normalize_advantages=True)
    plain = t(2.0, -2.0, 0.5, -0.5)
    torch.testing.assert_close(normalised, (plain - plain.mean()) / (plain.std() + 1e-4))


def test_rloo_advantages_reject_bad_input():
    with pytest.raises(ValueError, match="sequence_kl: required"):
        rloo_advantages({"r": [1.0, 2.0]}, num_generations=2, beta=0.05)
    with pytest.raises(ValueError, match="sequence_kl: expected"):
        rloo_advantages({"r": [1.0, 2.0]}, num_generations=2, sequence_kl=t(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="num_generations"):
        rloo_advantages({"r": [1.0, 2.0]}, num_generations=1, beta=0.0)
    with pytest.raises(ValueError, match="num_generations"):
        rloo_advantages({"r": [1.0, 2.0, 3.0]}, num_generations=2, beta=0.0)
    for bad in ([1.0], [1.0, -1.0], [0.0, True], "01"):
        with pytest.raises(ValueError, match="reward_clip_range"):
            rloo_advantages({"r": [1.0, 2.0]}, num_generations=2, beta=0.0, reward_clip_range=bad)
    with pytest.raises(ValueError, match="beta"):
        rloo_advantages({"r": [1.0, 2.0]}, num_generations=2, beta=-0.1)


# Two completions of 2 and 3 tokens (one ignored token inside the second).
MASK = torch.tensor([[False, True, True, False, False], [True, True, False, True, False]])


def test_on_policy_loss_is_minus_the_advantage_with_the_sequence_policy_gradient():
    logps = torch.tensor([[0.0, -1.0, -2.0, 0.0, 0.0], [-0.5, -0.5, 0.0, -1.0, 0.0]], requires_grad=True)
    adv = t(1.5, -0.5)
    loss, metrics = rloo_loss(logps, None, adv, MASK)
    assert loss.item() == pytest.approx(-(1.5 - 0.5) / 2)
    (grad,) = torch.autograd.grad(loss, logps)
    torch.testing.assert_close(grad, -adv[:, None] / 2 * MASK)  # d/dL_t of -A * exp(sum L - sg(sum L)) / B
    assert all(metrics[f"clip_ratio/{k}_mean"].item() == 0.0 for k in ("low", "high", "region"))


def test_the_ratio_is_of_whole_completions_and_clipped_per_completion():
    logps = torch.zeros(3, 5, requires_grad=True)
    mask = torch.tensor([[True, True, False, False, False]] * 3)
    # summed log ratios: +0.4 (rho 1.49, clipped with A > 0), -0.4 (0.67, clipped with A < 0), +0.4 with A < 0
    old = torch.tensor([[-0.2, -0.2, 9.0, 9.0, 9.0], [0.2, 0.2, 9.0, 9.0, 9.0], [-0.1, -0.3, 9.0, 9.0, 9.0]])
    adv = t(1.0, -1.0, -2.0)
    loss, metrics = rloo_loss(logps, old, adv, mask, epsilon=0.2, epsilon_high=0.3)
    rho = math.exp(0.4)
    assert loss.item() == pytest.approx(-(1.3 * 1.0 + 0.8 * -1.0 + rho * -2.0) / 3, rel=1e-6)
    (grad,) = torch.autograd.grad(loss, logps)
    torch.testing.assert_close(grad[:2], torch.zeros(2, 5))  # the clipped completions carry no gradient
    torch.testing.assert_close(grad[2], t(1, 1, 0, 0, 0) * 2.0 * rho / 3)
    torch.testing.assert_close(metrics["clip_ratio/high_mean"], torch.tensor(1 / 3))
    torch.testing.assert_close(metrics["clip_ratio/low_mean"], torch.tensor(1 / 3))
    torch.testing.assert_close(metrics["clip_ratio/region_mean"], torch.tensor(2 / 3))


def test_rloo_loss_rejects_bad_input():
    logps = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="advantages"):
        rloo_loss(logps, None, t(1.0), MASK)
    with pytest.raises(ValueError, match="old_logps"):
        rloo_loss(logps, torch.zeros(2, 4), t(1.0, 2.0), MASK)
    with pytest.raises(ValueError, match="epsilon"):
        rloo_loss(logps, None, t(1.0, 2.0), MASK, epsilon=1.0)
    with pytest.raises(ValueError, match="epsilon_high"):
        rloo_loss(logps, None, t(1.0, 2.0), MASK, epsilon_high=-0.1)
