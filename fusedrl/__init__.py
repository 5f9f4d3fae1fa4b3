"""fusedrl: fused vocab kernels and a lean post-training engine."""

__version__ = "0.1.0"
