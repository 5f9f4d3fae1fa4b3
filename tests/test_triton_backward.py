"""The Triton backward's building blocks: the fp32-accumulating matmul, the chunk plan, the strategy switch.

Both strategies are compared with the eager reference in test_kernels_parity.py (``triton`` and
``triton-atomic``); these tests pin the pieces the ``split`` strategy is made of.
"""
import pytest
import torch

from conftest import skip_unless_backend_runs

pytest.importorskip("triton")
from fusedrl.kernels.triton.backward_launch import (  # noqa: E402
    BACKWARD_ENV, DZ_CHUNK_BYTES, FP32_CHUNK_BYTES, backward_strategy, chunk_plan, matmul_accumulate,
)
from fusedrl.kernels.triton.launch_config import matmul_config, tile_config  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_matmul_accumulate_adds_into_fp32_output(dtype):
    """``out += a @ b`` for strided operands and ragged shapes (no dimension a multiple of a block)."""
    skip_unless_backend_runs("triton")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    m, k, n = 37, 29, 45
    a = torch.randn(k, m, device=dev).to(dtype).T  # a transposed view, like dz.T
    b = torch.randn(n, k, device=dev).to(dtype).T
    out = torch.randn(m, n, device=dev)
    want = out + a.float() @ b.float()
    matmul_accumulate(out, a, b, matmul_config(dtype))
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


def test_matmul_accumulate_into_a_row_slice():
    """Accumulating into rows of a larger buffer leaves the other rows untouched."""
    skip_unless_backend_runs("triton")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    buffer = torch.zeros(50, 19, device=dev)
    a, b = torch.randn(21, 11, device=dev), torch.randn(11, 19, device=dev)
    matmul_accumulate(buffer[7:28], a, b, matmul_config(torch.float32))
    torch.testing.assert_close(buffer[7:28], a @ b, atol=1e-5, rtol=1e-5)
    assert buffer[:7].abs().sum() == 0 and buffer[28:].abs().sum() == 0


@pytest.mark.parametrize("n, hidden, vocab", [(16384, 4096, 128256), (1000, 8192, 256000), (37, 64, 32000)])
def test_chunk_plan_respects_memory_budgets_on_gpu(n, hidden, vocab, monkeypatch):
    """GPU chunks: the fp32 hidden-gradient slice and the dz buffer stay within their budgets, whole tiles."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cfg = tile_config(torch.bfloat16, interpreting=False)
    plan = chunk_plan(n, vocab, hidden, torch.bfloat16, cfg)
    assert plan.tokens % cfg.block_n == 0 and plan.vocab % cfg.block_v == 0
    assert plan.tokens * hidden * 4 <= FP32_CHUNK_BYTES
    assert plan.tokens * plan.vocab * 2 <= DZ_CHUNK_BYTES
    assert plan.tokens <= max(n, cfg.block_n) + cfg.block_n
    assert plan.vocab >= min(vocab, 1024)


def test_backward_strategy_is_read_from_the_environment(monkeypatch):
    monkeypatch.delenv(BACKWARD_ENV, raising=False)
    assert backward_strategy() == "split"
    monkeypatch.setenv(BACKWARD_ENV, "atomic")
    assert backward_strategy() == "atomic"
    monkeypatch.setenv(BACKWARD_ENV, "fast")
    with pytest.raises(ValueError, match="FUSEDRL_TRITON_BACKWARD='fast': expected one of split, atomic"):
        backward_strategy()
