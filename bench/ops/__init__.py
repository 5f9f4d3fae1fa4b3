"""The table of ops x implementations: one module per op family, each defining ``OP``."""
from __future__ import annotations

from ..spec import OpSpec
from . import cross_entropy, distill, distill_full, dpo, grpo, logprobs, roofline, topk

OPS: tuple[OpSpec, ...] = (cross_entropy.OP, logprobs.OP, dpo.OP, grpo.OP, distill.OP, distill_full.OP, topk.OP)
ROOFLINE: OpSpec = roofline.OP
IMPL_NAMES: tuple[str, ...] = tuple(spec.name for spec in cross_entropy.OP.impls)


def op_by_name(name: str) -> OpSpec:
    """The op called ``name`` (raises KeyError listing the known names)."""
    for op in OPS:
        if op.name == name:
            return op
    raise KeyError(f"unknown op {name!r}; known: {', '.join(op.name for op in OPS)}")
