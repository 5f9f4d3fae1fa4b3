"""``fusedrl env``: what a bug report needs, the versions, the devices and the kernel paths this machine takes."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform

import torch

import fusedrl

from ..kernels.dispatch import resolve_backend
from .distributed import pick_device

PACKAGES = ("triton", "transformers", "peft", "accelerate", "datasets", "safetensors", "tensorboard",
            "wandb", "liger-kernel", "cut-cross-entropy")


def package_version(dist: str) -> str:
    """The installed version of distribution ``dist``, or ``not installed``."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _devices() -> str:
    if not torch.cuda.is_available():
        return "no CUDA device (CPU only)"
    return ", ".join(f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count()))


def _cuda_extension() -> str:
    if importlib.util.find_spec("fusedrl._C") is not None:
        return "installed (fusedrl._C)"
    if torch.cuda.is_available() and torch.version.cuda:
        return "not installed: built with ninja on first use (linear_topk backend cuda)"
    return "unavailable (needs a CUDA build of torch and a GPU)"


def environment_report() -> dict[str, str]:
    """``name -> value`` lines: fusedrl, Python and platform, package versions, CUDA, devices, and the
    backend ``kernel_backend: auto`` resolves to here."""
    device = pick_device()
    return {
        "fusedrl": fusedrl.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,  # with its build tag (2.11.0+cu130), which the distribution's version lacks
        **{name: package_version(name) for name in PACKAGES},
        "torch cuda": torch.version.cuda or "none (CPU build)",
        "devices": _devices(),
        "kernel_backend auto": f"{resolve_backend('auto', device)} (on {device.type} tensors)",
        "cuda extension": _cuda_extension(),
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "unset"),
        "distributed": "nccl" if torch.distributed.is_nccl_available() else "gloo only",
    }


def format_report(report: dict[str, str]) -> str:
    """The report as aligned ``name: value`` lines."""
    width = max(len(name) for name in report)
    return "\n".join(f"{name + ':':<{width + 1}} {value}" for name, value in report.items())
