"""Top-k distillation on [N, K] logprobs: teacher renormalisation, divergences, masking, T^2, bad input."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusedrl.kernels.losses import teacher_logprobs, topk_kd_loss


def test_teacher_renormalised_then_moved_to_the_distillation_temperature():
    probs = torch.tensor([[0.4, 0.2, 0.1]])  # top-3 of a larger vocabulary
    log_p = teacher_logprobs(probs.log())
    torch.testing.assert_close(log_p.exp(), probs / 0.7)
    hot = teacher_logprobs(probs.log(), kd_temperature=2.0, teacher_temperature=1.0)
    expected = (probs / 0.7) ** 0.5
    torch.testing.assert_close(hot.exp(), expected / expected.sum())


def test_forward_kl_hand_computed_and_zero_at_the_teacher():
    teacher = torch.tensor([[0.5, 0.25, 0.25]]).log()
    student = torch.tensor([[0.25, 0.5, 0.25]]).log()
    mask = torch.tensor([True])
    loss, metrics = topk_kd_loss(student, teacher, mask)
    expected = 0.5 * math.log(2) + 0.25 * math.log(0.5)
    torch.testing.assert_close(loss, torch.tensor(expected))
    assert set(metrics) == {"kd_loss"}
    reverse, _ = topk_kd_loss(student, teacher, mask, divergence="reverse_kl")
    torch.testing.assert_close(reverse, torch.tensor(0.25 * math.log(0.5) + 0.5 * math.log(2)))
    for divergence in ("forward_kl", "reverse_kl", "jsd"):
        same, _ = topk_kd_loss(teacher, teacher, mask, divergence=divergence)
        torch.testing.assert_close(same, torch.tensor(0.0), atol=1e-7, rtol=0)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 5), st.floats(0.05, 0.95), st.booleans(), st.sampled_from(
    ["forward_kl", "reverse_kl", "jsd"]))
def test_divergences_are_non_negative_over_the_topk_support(n, k, beta, renorm, divergence):
    student = torch.log_softmax(torch.randn(n, k + 3), -1)[:, :k]  # full-vocab logprobs of K ids
    # q must sum to 1 over the K ids for the divergences to be >= 0: renormalise here or in the loss
    teacher = torch.log_softmax(torch.randn(n, k), -1)
    loss, _ = topk_kd_loss(student if renorm else torch.log_softmax(student, -1), teacher, torch.ones(n, dtype=bool),
                           divergence=divergence, kd_beta=beta, kd_normalize_topk=renorm)
    assert loss.item() >= -1e-6


def test_masked_positions_are_ignored_even_with_garbage():
    student = torch.log_softmax(torch.randn(3, 4), -1).requires_grad_()
    teacher = torch.log_softmax(torch.randn(3, 4), -1)
    mask = torch.tensor([True, False, True])
    loss, _ = topk_kd_loss(student, teacher, mask)
    garbage = teacher.clone()
    garbage[1] = float("nan")
    again, _ = topk_kd_loss(student, garbage, mask)
    torch.testing.assert_close(loss, again)
    again.backward()
    assert torch.isfinite(student.grad).all() and torch.all(student.grad[1] == 0)
    kept, _ = topk_kd_loss(student[[0, 2]], teacher[[0, 2]], torch.ones(2, dtype=bool))
    torch.testing.assert_close(loss, kept)  # normalised by the count of valid positions


def test_temperature_squared_and_ce_mixing():
    student = torch.log_softmax(torch.randn(2, 3, 4), -1).requires_grad_()
    teacher = torch.log_softmax(torch.randn(2, 3, 4), -1)
    mask = torch.ones(2, 3, dtype=bool)
    base, metrics = topk_kd_loss(student, teacher, mask, kd_temperature=2.0)
    torch.testing.assert_close(base, 4 * metrics["kd_loss"])
    ce = torch.tensor(1.7, requires_grad=True)
    mixed, metrics = topk_kd_loss(student, teacher, mask, kd_temperature=2.0, kd_alpha=0.5, kd_ce_alpha=0.3, ce_loss=ce)
    torch.testing.assert_close(mixed, 0.5 * base + 0.3 * 1.7)
    assert set(metrics) == {"kd_loss", "ce_loss"}
    mixed.backward()
    torch.testing.assert_close(ce.grad, torch.tensor(0.3))


def test_topk_kd_rejects_bad_input():
    s, m = torch.zeros(2, 4), torch.ones(2, dtype=bool)
    with pytest.raises(ValueError, match="target_logprobs"):
        topk_kd_loss(s, torch.zeros(2, 3), m)
    with pytest.raises(ValueError, match="mask"):
        topk_kd_loss(s, s, torch.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="divergence"):
        topk_kd_loss(s, s, m, divergence="kl")
    with pytest.raises(ValueError, match="kd_beta"):
        topk_kd_loss(s, s, m, divergence="jsd", kd_beta=1.0)
    with pytest.raises(ValueError, match="ce_loss"):
        topk_kd_loss(s, s, m, kd_ce_alpha=0.5)
    with pytest.raises(ValueError, match="teacher_temperature"):
        topk_kd_loss(s, s, m, teacher_temperature=0.0)
