"""PPO pieces on token tensors: KL estimators, rewards, GAE, clipped policy and value losses."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusedrl.kernels.losses import gae_advantages, ppo_policy_loss, ppo_rewards, ppo_value_loss, token_kl


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


MASK = torch.tensor([[False, True, True, True, False], [False, False, True, True, True]])


def test_token_kl_estimators():
    logps, ref = t([-1.0, -2.0]), t([-1.5, -1.0])
    torch.testing.assert_close(token_kl(logps, ref, "k1"), t([0.5, -1.0]))
    expected = [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1]
    torch.testing.assert_close(token_kl(logps, ref, "k3"), t(expected))
    assert torch.all(token_kl(torch.randn(50), torch.randn(50), "k3") >= 0)
    with pytest.raises(ValueError, match="estimator"):
        token_kl(logps, ref, "k2")


def test_ppo_rewards_put_the_score_on_the_last_completion_token():
    logps = torch.full((2, 5), -1.0)
    ref = torch.full((2, 5), -1.5)
    rewards, metrics = ppo_rewards(t(2.0, -1.0), logps, ref, MASK, kl_coef=0.1)
    expected = torch.where(MASK, -0.05, 0.0)
    expected[0, 3] += 2.0
    expected[1, 4] -= 1.0
    torch.testing.assert_close(rewards, expected)
    torch.testing.assert_close(metrics["objective/kl"], torch.tensor(1.5))
    torch.testing.assert_close(metrics["objective/entropy"], torch.tensor(3.0))
    torch.testing.assert_close(metrics["objective/non_score_reward"], torch.tensor(-0.15))
    torch.testing.assert_close(metrics["objective/scores"], torch.tensor(0.5))
    torch.testing.assert_close(metrics["objective/rlhf_reward"], torch.tensor(0.35))
    with pytest.raises(ValueError, match="mask"):
        ppo_rewards(t(1.0, 1.0), logps, ref, torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="scores"):
        ppo_rewards(t(1.0), logps, ref, MASK)


def loop_gae(rewards, values, start, stop, gamma, lam):
    """Textbook GAE over one row's completion span ``[start, stop)``, value 0 after the end."""
    adv = [0.0] * len(rewards)
    last = 0.0
    for i in reversed(range(start, stop)):
        next_value = values[i + 1] if i + 1 < stop else 0.0
        last = rewards[i] + gamma * next_value - values[i] + gamma * lam * last
        adv[i] = last
    return adv


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(2, 9), st.floats(0.5, 1.0), st.floats(0.0, 1.0), st.data())
def test_gae_matches_a_textbook_loop(rows, length, gamma, lam, data):
    spans = [sorted(data.draw(st.lists(st.integers(0, length), min_size=2, max_size=2, unique=True)))
             for _ in range(rows)]
    mask = torch.zeros(rows, length, dtype=torch.bool)
    for r, (a, b) in enumerate(spans):
        mask[r, a:b] = True
    rewards, values = torch.randn(rows, length), torch.randn(rows, length)
    adv, ret = gae_advantages(rewards, values, mask, gamma=gamma, lam=lam, whiten_advantages=False)
    expected = torch.tensor([loop_gae(rewards[r].tolist(), values[r].tolist(), a, b, gamma, lam)
                             for r, (a, b) in enumerate(spans)])
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ret, torch.where(mask, expected + values, 0.0), atol=1e-5, rtol=1e-5)


def test_gae_whitening():
    rewards, values = torch.randn(2, 5) * 3 + 1, torch.randn(2, 5)
    adv, _ = gae_advantages(rewards, values, MASK)
    assert torch.all(adv[~MASK] == 0)
    torch.testing.assert_close(adv[MASK].mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(adv[MASK].std(), torch.tensor(1.0), atol=1e-4, rtol=0)
    # whitening the rewards keeps their (masked) mean: compare with pre-whitened rewards
    masked = rewards[MASK]
    scaled = torch.zeros_like(rewards)
    scaled[MASK] = (masked - masked.mean()) / masked.std() + masked.mean()
    got, _ = gae_advantages(rewards, values, MASK, whiten_rewards=True, whiten_advantages=False)
    want, _ = gae_advantages(scaled, values, MASK, whiten_advantages=False)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_ppo_policy_loss_clipping_and_metrics():
    mask = torch.tensor([[True, True, True, False]])
    old = torch.zeros(1, 4)
    # ratios 1.5 (A > 0: clipped), 1.5 (A < 0: not clipped), 0.5 (A > 0: not clipped); last token masked
    logps = torch.log(t([1.5, 1.5, 0.5, 9.0])).requires_grad_()
    adv = t([1.0, -1.0, 2.0, 5.0])
    loss, metrics = ppo_policy_loss(logps, old, adv, mask, cliprange=0.2)
    torch.testing.assert_close(loss, torch.tensor((-1.2 + 1.5 - 1.0) / 3))
    loss.backward()
    torch.testing.assert_close(logps.grad, t([0.0, 1.5 / 3, -1.0 / 3, 0.0]))
    torch.testing.assert_close(metrics["policy/clipfrac_avg"], torch.tensor(1 / 3))
    log_r = math.log(1.5), math.log(1.5), math.log(0.5)
    torch.testing.assert_close(metrics["policy/approxkl_avg"], torch.tensor(0.5 * sum(x * x for x in log_r) / 3))
    assert set(metrics) == {"policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg"}


def test_ppo_value_loss_clipping():
    mask = torch.tensor([[True, True, False]])
    values = t([1.0, 0.1, 7.0]).requires_grad_()
    old, returns = t([0.0, 0.0, 0.0]), t([0.0, 1.0, 0.0])
    loss, metrics = ppo_value_loss(values, old, returns, mask, cliprange_value=0.2)
    # token 0: max((1-0)^2, (0.2-0)^2) = 1 ; token 1: max(0.81, (0.1-1)^2 = 0.81) = 0.81
    torch.testing.assert_close(loss, torch.tensor(0.5 * (1.0 + 0.81) / 2))
    torch.testing.assert_close(metrics["val/clipfrac_avg"], torch.tensor(0.0))
    loss.backward()
    torch.testing.assert_close(values.grad, t([0.5, 0.5 * -0.9, 0.0]))
    _, metrics = ppo_value_loss(t([1.0, 3.0, 0.0]), old, t([1.0, 3.0, 0.0]), mask)
    torch.testing.assert_close(metrics["val/clipfrac_avg"], torch.tensor(1.0))


def test_ppo_rejects_bad_input():
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="old_logps"):
        ppo_policy_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, 3), mask)
    with pytest.raises(ValueError, match="mask"):
        ppo_policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), mask.float())
    with pytest.raises(ValueError, match="cliprange"):
        ppo_policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), mask, cliprange=1.5)
    with pytest.raises(ValueError, match="returns"):
        ppo_value_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, 3), mask)
    with pytest.raises(ValueError, match="lam"):
        gae_advantages(torch.zeros(2, 3), torch.zeros(2, 3), mask, lam=1.5)
