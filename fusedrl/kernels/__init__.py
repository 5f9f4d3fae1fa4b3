"""Vocab-sized ops: everything that knows V lives here.

Each op has three backends behind one function: ``triton`` (fused kernels),
``torch`` (chunked, bounded memory) and ``eager`` (full logits; the reference).
"""
from .cross_entropy import linear_cross_entropy
from .distill import linear_distill_divergence
from .logprobs import linear_logprobs
from .topk import linear_topk

__all__ = ["linear_cross_entropy", "linear_distill_divergence", "linear_logprobs", "linear_topk"]
