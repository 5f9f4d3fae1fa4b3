"""The one timing harness: median and p20/p80 of a callable over repeats, after warm-up."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

State = TypeVar("State")


@dataclass(frozen=True)
class Timing:
    """Milliseconds: the median and the 20th / 80th percentiles of the timed repeats."""

    median_ms: float
    p20_ms: float
    p80_ms: float


def summarize(samples_ms: list[float]) -> Timing:
    """``Timing`` of a non-empty list of samples (a single sample gives all three equal)."""
    if len(samples_ms) == 1:
        return Timing(samples_ms[0], samples_ms[0], samples_ms[0])
    cuts = statistics.quantiles(samples_ms, n=5, method="inclusive")
    return Timing(statistics.median(samples_ms), cuts[0], cuts[-1])


def measure(
    fn: Callable[[State], object],
    setup: Callable[[], State],
    *,
    device: torch.device,
    warmup: int,
    repeats: int,
) -> Timing:
    """Time ``fn(setup())``: ``setup`` runs untimed before every call (fresh grads, a fresh forward graph).

    CUDA: CUDA events around ``fn`` after a synchronize; CPU: ``time.perf_counter``.
    """
    samples = []
    for i in range(warmup + repeats):
        state = setup()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn(state)
            end.record()
            torch.cuda.synchronize(device)
            elapsed = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            fn(state)
            elapsed = (time.perf_counter() - t0) * 1e3
        del state
        if i >= warmup:
            samples.append(elapsed)
    return summarize(samples)
