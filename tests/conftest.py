"""Shared test helpers: tolerance table and backend lists."""
import os

import pytest
import torch

# DESIGN.md: fp32 vs eager atol 1e-5 / rtol 1e-4; bf16/fp16 inputs vs an fp32 eager reference atol 1e-2 / rtol 2e-2.
TOLERANCES = {
    torch.float32: dict(atol=1e-5, rtol=1e-4),
    torch.bfloat16: dict(atol=1e-2, rtol=2e-2),
    torch.float16: dict(atol=1e-2, rtol=2e-2),
}

FUSED_BACKENDS = ["torch", "triton"]


def assert_close(actual, expected, dtype, what=""):
    """Compare ``actual`` (any dtype) with the fp32 ``expected`` at the tolerance of input ``dtype``."""
    torch.testing.assert_close(actual.float(), expected.float(), **TOLERANCES[dtype], msg=lambda m: f"{what}: {m}")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def triton_runnable() -> bool:
    """Triton kernels run here: CUDA present, or the CPU interpreter is on."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def skip_unless_backend_runs(backend: str) -> None:
    """Fail loudly in CI if the triton backend cannot run; ``make test`` always sets TRITON_INTERPRET=1 on CPU."""
    if backend == "triton" and not triton_runnable():
        pytest.fail("triton backend not runnable: run the suite through `make test` (sets TRITON_INTERPRET=1)")


def device() -> torch.device:
    """CUDA when available (GPU parity runs), else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
