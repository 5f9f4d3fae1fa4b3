"""Loss statistics taken over every data-parallel rank (two CPU processes, gloo): the same as one process
holding all ranks' values."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fusedrl.kernels.losses import grpo_advantages
from fusedrl.kernels.losses.sequence import global_std

REWARDS = torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, -1.0, 0.25, 3.0, 1.5, 1.5])  # 5 groups of 2; rank 0 takes 3


def _rank_slice(rank: int) -> slice:
    return slice(0, 6) if rank == 0 else slice(6, 10)


def _worker(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        mine = REWARDS[_rank_slice(rank)]
        advantages, _ = grpo_advantages({"r": mine}, num_generations=2, scale_rewards="batch")
        results[rank] = (float(global_std(mine)), advantages)
    finally:
        dist.destroy_process_group()


def test_batch_statistics_span_every_rank():
    """GRPO's ``scale_rewards: batch`` divides by the std of all ranks' rewards, as TRL (which gathers them)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(port, results), nprocs=2, join=True)
    expected, _ = grpo_advantages({"r": REWARDS}, num_generations=2, scale_rewards="batch")
    for rank in (0, 1):
        std, advantages = results[rank]
        assert std == pytest.approx(torch.std(REWARDS).item(), rel=1e-6)
        torch.testing.assert_close(advantages, expected[_rank_slice(rank)])
    assert float(global_std(REWARDS)) == pytest.approx(torch.std(REWARDS).item(), rel=1e-6)  # one process
