"""Masked reductions shared by every loss."""
import pytest
import torch

from fusedrl.kernels.losses import (
    completion_lengths,
    completion_mask,
    masked_mean,
    masked_sum,
    masked_whiten,
    sequence_logps,
    token_mean_nll,
)
from fusedrl.kernels.losses.checks import check_range
from fusedrl.kernels.losses.sequence import global_sum_and_count, pairwise_sequence_logps

LABELS = torch.tensor([[-100, 5, 7, -100], [-100, -100, -100, -100], [1, 2, 3, 4]])
VALUES = torch.tensor([[9.0, 1.0, 2.0, float("nan")], [3.0, 3.0, 3.0, 3.0], [1.0, 1.0, 1.0, 1.0]])


def test_mask_lengths_and_sums_ignore_masked_garbage():
    mask = completion_mask(LABELS)
    assert completion_lengths(LABELS).tolist() == [2, 0, 4]
    assert masked_sum(VALUES, mask, dim=-1).tolist() == [3.0, 0.0, 4.0]
    assert masked_sum(VALUES, mask).item() == 7.0
    assert masked_mean(VALUES, mask, dim=-1).tolist() == [1.5, 0.0, 1.0]
    assert masked_mean(VALUES, mask).item() == pytest.approx(7.0 / 6)
    assert sequence_logps(VALUES, mask).tolist() == [3.0, 0.0, 4.0]
    assert token_mean_nll(-VALUES, mask).item() == pytest.approx(7.0 / 6)


def test_reductions_accumulate_in_fp32_and_pass_gradients_only_to_kept_entries():
    values = VALUES.nan_to_num().to(torch.bfloat16).requires_grad_()
    out = masked_mean(values, completion_mask(LABELS), dim=-1)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert values.grad[0].tolist() == [0.0, 0.5, 0.5, 0.0] and torch.all(values.grad[1] == 0)


def test_masked_whiten_with_and_without_shifting_the_mean():
    mask = completion_mask(LABELS)
    white = masked_whiten(VALUES, mask)
    kept = white[mask]
    assert kept.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert kept.std().item() == pytest.approx(1.0, abs=1e-4)
    scaled = masked_whiten(VALUES, mask, shift_mean=False)[mask]
    assert scaled.mean().item() == pytest.approx(VALUES[mask].mean().item(), abs=1e-6)


def test_global_sum_and_count_without_distributed():
    total, count = global_sum_and_count(torch.tensor([1.0, 2.0, 4.0]))
    assert (total.item(), count.item()) == (7.0, 3.0)


def test_check_range_messages():
    check_range("x", 0.5, 0.0, 1.0, low_open=True)
    with pytest.raises(ValueError, match=r"x: expected a finite number in \(0.0, 1.0\], got 0.0"):
        check_range("x", 0.0, 0.0, 1.0, low_open=True)
    with pytest.raises(ValueError, match="x"):
        check_range("x", float("nan"))
    with pytest.raises(ValueError, match="x"):
        check_range("x", True)


def test_ld_dpo_weighs_tokens_past_the_shorter_reply():
    """LD-DPO: pair 0 has replies of 3 and 1 tokens (shared 1), pair 1 of 2 and 4 (shared 2); tokens past the
    shared length count ld_alpha = 0.5 times. Prompt positions (mask False) are skipped wherever they are."""
    mask = torch.tensor([[False, True, True, True, False], [True, True, False, False, False],
                         [False, False, False, True, False], [False, True, True, True, True]])
    logps = torch.arange(1.0, 21.0).view(4, 5)
    got = pairwise_sequence_logps(logps, mask, 0.5)
    want = torch.tensor([2 + 0.5 * (3 + 4), 6 + 7, 14.0, 17 + 18 + 0.5 * (19 + 20)])
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(pairwise_sequence_logps(logps, mask, None), (logps * mask).sum(-1))
    torch.testing.assert_close(pairwise_sequence_logps(logps, mask, 1.0), (logps * mask).sum(-1))
