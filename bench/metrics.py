"""Numbers derived from the measured rows of one case: TFLOP/s, % of the matmul roofline, ratios to fusedrl."""
from __future__ import annotations

from .rows import Row
from .spec import Case, OpSpec


def _tflops(flops: float, ms: float | None) -> float | None:
    return None if not ms else flops / (ms * 1e-3) / 1e12


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else num / den


def add_throughput(row: Row, op: OpSpec, case: Case) -> None:
    """Fill the TFLOP/s columns of ``row`` from ``op``'s flop counts (multiples of N·H·V)."""
    nhv = float(case.n) * case.h * case.v
    row.fwd_tflops = _tflops(op.fwd_flops * nhv, row.fwd_ms)
    if op.differentiable:
        row.bwd_tflops = _tflops(op.bwd_flops * nhv, row.bwd_ms)
        row.fwdbwd_tflops = _tflops((op.fwd_flops + op.bwd_flops) * nhv, row.fwdbwd_ms)


def add_comparisons(rows: list[Row], roofline: Row, differentiable: bool) -> None:
    """Fill roofline_pct (vs ``roofline``), time_vs_fusedrl and mem_vs_fusedrl of the rows of one case."""
    mode = "fwdbwd" if differentiable else "fwd"
    roof = getattr(roofline, f"{mode}_tflops")
    fusedrl = next((r for r in rows if r.impl == "fusedrl"), None)
    for row in rows:
        row.roofline_pct = _ratio(getattr(row, f"{mode}_tflops"), roof)
        if row.roofline_pct is not None:
            row.roofline_pct *= 100.0
        if fusedrl is not None:
            row.time_vs_fusedrl = _ratio(row.main_ms(differentiable), fusedrl.main_ms(differentiable))
            row.mem_vs_fusedrl = _ratio(row.peak_mib, fusedrl.peak_mib)
