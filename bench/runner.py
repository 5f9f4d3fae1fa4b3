"""Runs the suite: for each op and case, checks every implementation against fusedrl, then times it and
measures its peak memory, and adds the matmul roofline of the same shape."""
from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from . import memory
from .check import compare
from .competitors import import_error
from .metrics import add_comparisons, add_throughput
from .ops import ROOFLINE
from .rows import MIB, Row
from .spec import BuildOptions, Case, Impl, ImplSpec, Inputs, OpSpec
from .timing import Timing, measure


@dataclass(frozen=True)
class RunConfig:
    """How to run: device, repeats, the fusedrl backend, torch.compile on/off and which competitors."""

    device: torch.device
    warmup: int
    repeats: int
    fusedrl_backend: str = "auto"
    compile: bool = False
    compile_off_reason: str = "torch.compile disabled (--compile off)"
    impls: frozenset[str] | None = None
    log: Callable[[str], None] = print

    def wants(self, spec: ImplSpec) -> bool:
        """fusedrl always runs (it is the reference); the others when no filter is set or when named."""
        return spec.name == "fusedrl" or self.impls is None or spec.name in self.impls


def _leaves(inputs: Inputs) -> list[torch.Tensor]:
    return [t for t in inputs.values() if t.requires_grad]


def clear_grads(inputs: Inputs) -> None:
    """Drop the gradients of every grad leaf."""
    for leaf in _leaves(inputs):
        leaf.grad = None


def forward(op: OpSpec, impl: Impl, inputs: Inputs) -> torch.Tensor:
    """One call of ``impl`` (under no_grad for no-grad ops)."""
    if op.differentiable:
        return impl(inputs)
    with torch.no_grad():
        return impl(inputs)


def backward(out: torch.Tensor, inputs: Inputs) -> None:
    """Backward of ``out``, with the op's upstream gradient ``grad_out`` when it has one."""
    torch.autograd.backward(out, inputs.get("grad_out"))


def run_once(op: OpSpec, impl: Impl, inputs: Inputs) -> dict[str, torch.Tensor]:
    """``out`` (detached) and ``grad_<name>`` of every grad leaf after one forward (+ backward)."""
    clear_grads(inputs)
    out = forward(op, impl, inputs)
    outputs = {"out": out.detach()}
    if op.differentiable:
        backward(out, inputs)
        outputs.update({f"grad_{name}": t.grad for name, t in inputs.items() if t.requires_grad})
        clear_grads(inputs)
    return outputs


def time_modes(op: OpSpec, impl: Impl, inputs: Inputs, cfg: RunConfig) -> dict[str, Timing]:
    """Forward, backward and forward+backward timings (forward only for no-grad ops)."""
    timed = dict(device=cfg.device, warmup=cfg.warmup, repeats=cfg.repeats)

    def fresh_forward() -> torch.Tensor:
        clear_grads(inputs)
        return forward(op, impl, inputs)

    timings = {"fwd": measure(lambda _: forward(op, impl, inputs), lambda: clear_grads(inputs), **timed)}
    if op.differentiable:
        timings["bwd"] = measure(lambda out: backward(out, inputs), fresh_forward, **timed)
        timings["fwdbwd"] = measure(lambda _: backward(forward(op, impl, inputs), inputs),
                                    lambda: clear_grads(inputs), **timed)
    clear_grads(inputs)
    return timings


def peak_memory(op: OpSpec, impl: Impl, inputs: Inputs, device: torch.device) -> tuple[int, int]:
    """``(peak bytes above the inputs, bytes of the gradients produced)`` of one forward (+ backward)."""
    clear_grads(inputs)

    def call() -> None:
        out = forward(op, impl, inputs)
        if op.differentiable:
            backward(out, inputs)

    peak = memory.peak_bytes(call, device)
    grads = sum(t.grad.numel() * t.grad.element_size() for t in _leaves(inputs) if t.grad is not None)
    clear_grads(inputs)
    return peak, grads


def availability(spec: ImplSpec, cfg: RunConfig) -> str:
    """The status of an implementation that will not run, or "" when it can."""
    if spec.build is None:
        return f"unavailable: {spec.unsupported}"
    if spec.library is not None:
        reason = import_error(spec.library)
        if reason:
            return f"unavailable: {reason}"
    if spec.cuda_only and cfg.device.type != "cuda":
        return "unavailable: needs a CUDA device"
    if spec.needs_compile and not cfg.compile:
        return f"skipped: {cfg.compile_off_reason}"
    return ""


def error_status(err: BaseException) -> str:
    """``oom`` or ``error: <type>: <first line>``."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return "oom"
    first_line = (str(err).strip().splitlines() or [""])[0]
    return f"error: {type(err).__name__}: {first_line[:200]}"


def free_memory(device: torch.device) -> None:
    """Return freed blocks to the CUDA driver between implementations (collecting cycles first); no-op on CPU."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def _measure_into(row: Row, op: OpSpec, impl: Impl, inputs: Inputs, cfg: RunConfig,
                  memory_ok: bool = True) -> None:
    """Fill ``row``'s timings, and its peak memory unless ``memory_ok`` is False."""
    for mode, timing in time_modes(op, impl, inputs, cfg).items():
        setattr(row, f"{mode}_ms", timing.median_ms)
        setattr(row, f"{mode}_p20_ms", timing.p20_ms)
        setattr(row, f"{mode}_p80_ms", timing.p80_ms)
    if memory_ok:
        peak, grads = peak_memory(op, impl, inputs, cfg.device)
        row.peak_mib, row.extra_mib = peak / MIB, (peak - grads) / MIB


def _run_impls(op: OpSpec, case: Case, inputs: Inputs, base: dict, cfg: RunConfig) -> list[Row]:
    options = BuildOptions(cfg.device, cfg.fusedrl_backend, cfg.compile)
    reference: dict[str, torch.Tensor] | None = None
    rows = []
    for spec in filter(cfg.wants, op.impls):
        row = Row(impl=spec.name, status=availability(spec, cfg), **base)
        rows.append(row)
        if row.status:
            continue
        with spec.scoped_env():  # e.g. the Triton backward strategy, in force for the backward calls too
            try:
                if cfg.compile or cfg.device.type == "cuda":  # torch.compile and Liger's compiled losses
                    torch._dynamo.reset()  # fresh caches per case, so no recompile limit falls back to eager
                impl = spec.build(options)
                outputs = run_once(op, impl, inputs)
                if spec.name == "fusedrl":
                    reference, row.status = outputs, "reference"
                elif reference is None:
                    row.status = "unchecked: no fusedrl reference"
                else:
                    row.status, row.tol_ratio = compare(outputs, reference, case.dtype)
                del outputs
                # On CPU, memory is tracked by a dispatch mode, under which dynamo runs compiled code eagerly.
                cpu_compiled = spec.needs_compile and cfg.device.type == "cpu"
                _measure_into(row, op, impl, inputs, cfg, memory_ok=not cpu_compiled)
            except Exception as err:  # reported in the row, never raised: one failure must not hide the others
                row.status = "; ".join(filter(None, (row.status, error_status(err))))
            finally:
                clear_grads(inputs)
                free_memory(cfg.device)
    return rows


def run_roofline(case: Case, cfg: RunConfig) -> Row:
    """The ``torch.matmul`` row of ``case``'s ``[N, H] x [H, V]`` shape (status ``roofline`` or the error)."""
    spec = ROOFLINE.impls[0]
    row = Row(op=ROOFLINE.name, impl=spec.name, n=case.n, h=case.h, v=case.v, dtype=case.dtype,
              layout="", status="roofline")
    try:
        inputs = ROOFLINE.make_inputs(case, cfg.device)
        _measure_into(row, ROOFLINE, spec.build(BuildOptions(cfg.device)), inputs, cfg)
        del inputs
    except Exception as err:  # reported in the row
        row.status = error_status(err)
    free_memory(cfg.device)
    add_throughput(row, ROOFLINE, case)
    return row


def run_case(op: OpSpec, case: Case, roofline: Row, cfg: RunConfig) -> list[Row]:
    """Rows of every implementation of ``op`` on ``case`` plus the roofline row (renamed to ``op``)."""
    base = dict(op=op.name, n=case.n, h=case.h, v=case.v, dtype=case.dtype)
    reason = op.unavailable()
    if reason:
        return [Row(impl="fusedrl", layout="", status=f"unavailable: {reason}", **base)]
    try:
        layout = "x".join(str(d) for d in case.layout(pairs=op.pairs))
    except ValueError as err:
        return [Row(impl="fusedrl", layout="", status=f"error: {err}", **base)]
    inputs = op.make_inputs(case, cfg.device)
    rows = _run_impls(op, case, inputs, dict(base, layout=layout), cfg)
    del inputs
    free_memory(cfg.device)
    for row in rows:
        add_throughput(row, op, case)
    rows.append(dataclasses.replace(roofline, op=op.name))
    add_comparisons(rows, roofline, op.differentiable)
    return rows


def run_suite(plan: Iterable[tuple[OpSpec, Case]], cfg: RunConfig) -> Iterator[list[Row]]:
    """The rows of every ``(op, case)`` of ``plan`` in order, one list per case, as each case finishes (so a
    caller that is interrupted keeps what was measured); the roofline of each distinct shape is measured once."""
    rooflines: dict[tuple[int, int, int, str], Row] = {}
    for op, case in plan:
        key = (case.n, case.h, case.v, case.dtype)
        if key not in rooflines:
            rooflines[key] = run_roofline(case, cfg)
        case_rows = run_case(op, case, rooflines[key], cfg)
        for row in case_rows:
            cfg.log(describe(row, op.differentiable))
        yield case_rows


def describe(row: Row, differentiable: bool) -> str:
    """One progress line for ``row``."""
    ms = row.main_ms(differentiable)
    timing = "" if ms is None else f"  {'fwd+bwd' if differentiable else 'fwd'} {ms:.3g} ms"
    mem = "" if row.peak_mib is None else f"  peak {row.peak_mib:.3g} MiB"
    return (f"{row.op:<9} {row.impl:<14} N={row.n} H={row.h} V={row.v} {row.dtype}: "
            f"{row.status}{timing}{mem}")
