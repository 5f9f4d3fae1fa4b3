"""The environment header of a run: device, driver, library versions, settings; and the device slug."""
from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

import fusedrl
from fusedrl.engine.env_report import package_version
from fusedrl.kernels.triton.backward_launch import BACKWARD_ENV

from . import competitors

REPO = Path(__file__).resolve().parent.parent


def _run(cmd: list[str]) -> str | None:
    """stdout of ``cmd`` stripped, or None when it cannot run."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()


def device_slug(device: torch.device) -> str:
    """A folder-friendly name of the device: ``nvidia-h100-80gb-hbm3``, ``cpu-amd-epyc-7b13``, ..."""
    name = device_name(device).lower()
    slug = re.sub(r"[^a-z0-9]+", "-", re.sub(r"\((r|tm)\)", "", name)).strip("-")[:40].strip("-")
    return slug if device.type == "cuda" else f"cpu-{slug}"


def _driver() -> str | None:
    out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return out.splitlines()[0] if out else None


def environment(device: torch.device, settings: dict) -> dict:
    """Everything needed to reproduce or compare a run; ``settings`` are the run's options."""
    cuda = device.type == "cuda"
    return {
        "device": device_name(device),
        "device_type": device.type,
        "driver": _driver() if cuda else None,
        "cuda_runtime": torch.version.cuda,
        "torch": torch.__version__,
        "triton": package_version("triton"),
        "liger-kernel": competitors.version("liger"),
        "cut-cross-entropy": competitors.version("cce"),
        "fusedrl": fusedrl.__version__,
        "git_commit": _run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", ""),
        BACKWARD_ENV: os.environ.get(BACKWARD_ENV, ""),  # in force for the fusedrl row (unset: split)
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **settings,
    }
