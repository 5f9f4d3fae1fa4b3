"""fusedrl's benchmark suite: fused kernels vs eager torch, torch.compile, Liger-Kernel and Cut Cross-Entropy.

Run ``python -m bench --help`` (or ``fusedrl bench``), and ``python -m bench.profile --help`` for the per-kernel
profile; see bench/README.md.
"""
from .cli import main

__all__ = ["main"]
