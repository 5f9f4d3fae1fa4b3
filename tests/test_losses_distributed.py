"""Statistics taken over every data-parallel rank (two CPU processes, gloo): the same as one process holding
all ranks' values; a stand-in rank adds nothing."""
import contextlib
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fusedrl.engine.algorithms.grpo import tokens_per_micro_batch
from fusedrl.kernels.losses import grpo_advantages, rloo_advantages
from fusedrl.kernels.losses.sequence import global_quantile, global_std, global_sum_and_count, stand_in

REWARDS = torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, -1.0, 0.25, 3.0, 1.5, 1.5])  # 5 groups of 2; rank 0 takes 3
LABELS = torch.tensor([[5, 6, -100, -100], [7, -100, -100, -100], [1, 2, 3, 4]])  # 2 + 1 + 4 = 7 tokens


def _rank_slice(rank: int) -> slice:
    return slice(0, 6) if rank == 0 else slice(6, 10)


def _worker(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        mine = REWARDS[_rank_slice(rank)]
        advantages, _ = grpo_advantages({"r": mine}, num_generations=2, scale_rewards="batch")
        rloo, rloo_metrics = rloo_advantages({"r": mine}, num_generations=2, beta=0.0, normalize_advantages=True)
        labels = LABELS if rank == 0 else LABELS[:2]  # 7 and 3 completion tokens
        tokens = tokens_per_micro_batch(labels, micro_batches=2)
        with stand_in() if rank == 1 else contextlib.nullcontext():
            total, count = global_sum_and_count(torch.full((3,), 10.0 * (rank + 1)))
            ignored = global_quantile(torch.full((5,), 100.0), 0.5)  # rank 1's values count as none
        quantile = global_quantile(REWARDS[_rank_slice(rank)], 0.7)  # 6 and 4 values: padded for the gather
        results[rank] = (float(global_std(mine)), advantages, tokens, float(total), float(count), float(quantile),
                         float(ignored), rloo, float(rloo_metrics["reward_std"]))
    finally:
        dist.destroy_process_group()


def test_batch_statistics_span_every_rank():
    """GRPO's ``scale_rewards: batch`` divides by the std of all ranks' rewards (as TRL, which gathers them), and
    RLOO's ``normalize_advantages`` by the mean and std of all ranks' advantages;
    dapo's normaliser is the global batch's tokens over all ranks' micro-batches; ``top_entropy_quantile``'s
    threshold is the quantile of every rank's values; a rank inside ``stand_in`` (evaluating a stand-in batch)
    still joins the sum and the gather but adds nothing to them."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(port, results), nprocs=2, join=True)
    expected, _ = grpo_advantages({"r": REWARDS}, num_generations=2, scale_rewards="batch")
    expected_rloo, _ = rloo_advantages({"r": REWARDS}, num_generations=2, beta=0.0, normalize_advantages=True)
    for rank in (0, 1):
        std, advantages, tokens, total, count, quantile, ignored, rloo, rloo_reward_std = results[rank]
        torch.testing.assert_close(rloo, expected_rloo[_rank_slice(rank)])
        assert rloo_reward_std == pytest.approx(torch.std(REWARDS).item(), rel=1e-6)
        assert quantile == pytest.approx(torch.quantile(REWARDS, 0.7).item(), rel=1e-6)
        assert ignored == 100.0
        assert std == pytest.approx(torch.std(REWARDS).item(), rel=1e-6)
        torch.testing.assert_close(advantages, expected[_rank_slice(rank)])
        assert tokens == pytest.approx((7 + 3) / (2 * 2))
        assert (total, count) == (30.0, 3.0)  # rank 0's three values of 10 only
    assert float(global_std(REWARDS)) == pytest.approx(torch.std(REWARDS).item(), rel=1e-6)  # one process
    for q in (0.0, 0.35, 1.0):
        assert float(global_quantile(REWARDS, q)) == pytest.approx(torch.quantile(REWARDS, q).item(), rel=1e-6)
    assert global_quantile(REWARDS[:0], 0.5).isnan()
    assert tokens_per_micro_batch(LABELS, micro_batches=2) == pytest.approx(7 / 2)
