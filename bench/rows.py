"""The result record: one row per (op, implementation, case), in the column order of the CSV."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

MIB = float(1 << 20)


@dataclass
class Row:
    """One measured (or unavailable) implementation of one op on one case.

    Times are milliseconds (median, p20, p80), memory MiB above the inputs, ``extra_mib`` above
    the inputs and the gradients; ``*_vs_fusedrl`` divide this row's number by fusedrl's.
    """

    op: str
    impl: str
    n: int
    h: int
    v: int
    dtype: str
    layout: str
    status: str
    tol_ratio: float | None = None
    fwd_ms: float | None = None
    fwd_p20_ms: float | None = None
    fwd_p80_ms: float | None = None
    bwd_ms: float | None = None
    bwd_p20_ms: float | None = None
    bwd_p80_ms: float | None = None
    fwdbwd_ms: float | None = None
    fwdbwd_p20_ms: float | None = None
    fwdbwd_p80_ms: float | None = None
    fwd_tflops: float | None = None
    bwd_tflops: float | None = None
    fwdbwd_tflops: float | None = None
    roofline_pct: float | None = None
    peak_mib: float | None = None
    extra_mib: float | None = None
    time_vs_fusedrl: float | None = None
    mem_vs_fusedrl: float | None = None

    def as_dict(self) -> dict:
        """The row as a plain dict (JSON / CSV)."""
        return asdict(self)

    def main_ms(self, differentiable: bool) -> float | None:
        """The headline time: forward+backward, or forward for no-grad ops."""
        return self.fwdbwd_ms if differentiable else self.fwd_ms


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Row))
