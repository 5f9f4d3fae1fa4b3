"""Guarded access to the competitor libraries (Liger-Kernel, Cut Cross-Entropy) and thin adapters to them."""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

import torch

from fusedrl.engine.env_report import package_version

from .eager import IGNORE_INDEX


@dataclass(frozen=True)
class Library:
    """An optional package: its import name and its distribution name."""

    module: str
    dist: str


LIBRARIES = {
    "liger": Library("liger_kernel", "liger-kernel"),
    "cce": Library("cut_cross_entropy", "cut-cross-entropy"),
}


def import_error(name: str) -> str | None:
    """Why library ``name`` cannot be imported, or None when it imports."""
    lib = LIBRARIES[name]
    try:
        importlib.import_module(lib.module)
    except Exception as err:  # a broken install is as unavailable as a missing one
        return f"{lib.dist} not importable ({type(err).__name__}: {err})"
    return None


def version(name: str) -> str:
    """The installed version of library ``name``, or ``not installed``."""
    return package_version(LIBRARIES[name].dist)


def supported_kwargs(cls: type, **kwargs) -> dict:
    """The subset of ``kwargs`` that ``cls.__init__`` accepts (APIs differ across releases)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def loss_tensor(output) -> torch.Tensor:
    """The loss of a Liger call: the tensor itself, the first item of a tuple, or ``.loss`` of an output object."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return loss_tensor(output[0])
    return output.loss


def cce_token_logps(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Token logprobs from Cut Cross-Entropy: ``-linear_cross_entropy(reduction="none")``, 0 where ignored.

    hidden ``[..., H]``, weight ``[V, H]``, ids ``[...]`` -> fp32 ``[...]``.
    """
    from cut_cross_entropy import linear_cross_entropy

    nll = linear_cross_entropy(hidden, weight, ids, ignore_index=IGNORE_INDEX, reduction="none")
    return torch.where(ids != IGNORE_INDEX, -nll.float(), 0.0)


def liger_token_logps(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Token logprobs from Liger's fused linear cross-entropy with ``reduction="none"``, 0 where ignored.

    hidden ``[N, H]``, weight ``[V, H]``, ids ``[N]`` -> fp32 ``[N]``.
    """
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    nll = loss_tensor(LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="none")(
        weight, hidden, ids))
    return torch.where(ids != IGNORE_INDEX, -nll.float(), 0.0)
