"""fusedrl's benchmark suite: fused kernels vs eager torch, torch.compile, Liger-Kernel and Cut Cross-Entropy.

Run ``python -m bench --help`` (or ``fusedrl bench``); see bench/README.md.
"""
from .cli import main

__all__ = ["main"]
