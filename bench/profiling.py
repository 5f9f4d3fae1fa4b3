"""Kernel-level profile of one implementation: torch.profiler over a few forward+backward steps, summed per
kernel name and phase (forward / backward). CUDA: GPU kernel (and memcpy/memset) time; CPU: self CPU time per op.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from .runner import backward, clear_grads, forward
from .spec import Impl, Inputs, OpSpec

MARK = "bench.phase."  # record_function names of the phases; never counted as kernels
UNPLACED = "other"  # a kernel that started in no phase window (clock skew between host and device)
PHASES = ("fwd", "bwd", UNPLACED)


@dataclass(frozen=True)
class KernelStat:
    """One kernel (CUDA) or op (CPU) in one phase, per profiled step."""

    phase: str
    name: str
    calls: float
    ms: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(op: OpSpec, impl: Impl, inputs: Inputs, device: torch.device) -> None:
    """One forward (+ backward), each phase in a ``MARK`` range that ends once the device is idle."""
    clear_grads(inputs)
    with record_function(MARK + "fwd"):
        out = forward(op, impl, inputs)
        _sync(device)
    if op.differentiable:
        with record_function(MARK + "bwd"):
            backward(out, inputs)
            _sync(device)
    del out
    clear_grads(inputs)


def _windows(events) -> list[tuple[float, float, str]]:
    """``(start us, end us, phase)`` of every host-side phase range."""
    return [(e.time_range.start, e.time_range.end, e.name[len(MARK):]) for e in events
            if e.device_type == DeviceType.CPU and e.name.startswith(MARK)]


def _phase(start_us: float, windows: list[tuple[float, float, str]]) -> str:
    return next((phase for lo, hi, phase in windows if lo <= start_us <= hi), UNPLACED)


def _timed(events, device: torch.device) -> Iterable[tuple[str, float, float]]:
    """``(name, start us, us)`` of what takes the time: device kernels on CUDA, ops' self time on CPU."""
    for e in events:
        if e.name.startswith(MARK) or getattr(e, "is_user_annotation", False):
            continue
        if device.type == "cuda" and e.device_type == DeviceType.CUDA:
            yield e.name, e.time_range.start, e.time_range.elapsed_us()
        elif device.type != "cuda" and e.device_type == DeviceType.CPU and e.self_cpu_time_total > 0:
            yield e.name, e.time_range.start, e.self_cpu_time_total


def aggregate(events, device: torch.device, steps: int) -> list[KernelStat]:
    """Per (phase, name): calls and milliseconds per step, longest first."""
    windows = _windows(events)
    calls: dict[tuple[str, str], int] = defaultdict(int)
    total_us: dict[tuple[str, str], float] = defaultdict(float)
    for name, start, us in _timed(events, device):
        key = (_phase(start, windows), name)
        calls[key] += 1
        total_us[key] += us
    stats = [KernelStat(phase, name, calls[(phase, name)] / steps, us / steps / 1e3)
             for (phase, name), us in total_us.items()]
    return sorted(stats, key=lambda s: -s.ms)


def _activities(device: torch.device) -> list[ProfilerActivity]:
    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])


def profile_steps(op: OpSpec, impl: Impl, inputs: Inputs, device: torch.device, steps: int) -> list[KernelStat]:
    """Kernel statistics of ``steps`` profiled steps (after the caller's warm-up)."""
    with profile(activities=_activities(device)) as prof:
        for _ in range(steps):
            step(op, impl, inputs, device)
    return aggregate(prof.events(), device, steps)


def write_trace(op: OpSpec, impl: Impl, inputs: Inputs, device: torch.device, path: Path) -> None:
    """One more step, profiled alone, written to ``path`` as a Chrome trace (gzipped when it ends in ``.gz``)."""
    with profile(activities=_activities(device)) as prof:
        step(op, impl, inputs, device)
    prof.export_chrome_trace(str(path))
