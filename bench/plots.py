"""PNG plots: time and peak memory vs N per op, one line per implementation (matplotlib, Agg)."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from .rows import Row
from .spec import OpSpec


def matplotlib_missing() -> str | None:
    """Why plots cannot be drawn, or None when matplotlib imports."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        return f"matplotlib not importable ({err})"
    return None


def _series(rows: Sequence[Row], differentiable: bool) -> dict[str, list[tuple[int, float, float | None]]]:
    """impl -> sorted ``(N, time ms, peak MiB)`` of the rows that have a time."""
    lines = defaultdict(list)
    for row in rows:
        ms = row.main_ms(differentiable)
        if ms is not None:
            lines[row.impl].append((row.n, ms, row.peak_mib))
    return {impl: sorted(points) for impl, points in lines.items()}


def plot_op(op: OpSpec, rows: Sequence[Row], out: Path) -> list[str]:
    """One PNG per (H, V, dtype) group of ``op``'s rows with at least two N; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")

    groups = defaultdict(list)
    for row in rows:
        groups[(row.h, row.v, row.dtype)].append(row)
    names = []
    for (h, v, dtype), group in sorted(groups.items()):
        if len({r.n for r in group}) < 2:
            continue
        series = _series(group, op.differentiable)
        if not series:
            continue
        fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.2))
        for impl, points in series.items():
            style = "--" if impl == "torch.matmul" else "-"
            ns = [p[0] for p in points]
            ax_time.plot(ns, [p[1] for p in points], style, marker="o", label=impl)
            mem = [(p[0], p[2]) for p in points if p[2] is not None]
            if mem:
                ax_mem.plot([m[0] for m in mem], [m[1] for m in mem], style, marker="o", label=impl)
        mode = "forward+backward" if op.differentiable else "forward"
        ax_time.set(xscale="log", yscale="log", xlabel="N (tokens)", ylabel=f"{mode} time (ms, median)")
        ax_mem.set(xscale="log", yscale="log", xlabel="N (tokens)", ylabel="peak memory above inputs (MiB)")
        all_ns = sorted({r.n for r in group})
        for ax in (ax_time, ax_mem):
            ax.set_xticks(all_ns)
            ax.xaxis.set_major_formatter(plain)
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"{op.name}: {op.title} — H={h}, V={v}, {dtype}")
        fig.tight_layout()
        name = f"{op.name}-h{h}-v{v}-{dtype}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        names.append(name)
    return names
