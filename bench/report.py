"""Writes a run's rows as CSV, JSON (with the environment header) and a Markdown table (results.md)."""
from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from .rows import COLUMNS, Row
from .spec import OpSpec

CSV_NAME, JSON_NAME, MD_NAME = "results.csv", "results.json", "results.md"

MD_COLUMNS = ("impl", "N (rows x seq)", "H", "V", "dtype", "status", "fwd ms", "bwd ms", "fwd+bwd ms [p20-p80]",
              "TFLOP/s", "% matmul", "peak MiB", "extra MiB", "time x fusedrl", "mem x fusedrl")


def write_csv(rows: Sequence[Row], path: Path) -> None:
    """One line per row, columns in ``results.COLUMNS`` order; missing numbers are empty."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.as_dict().items()})


def write_json(rows: Sequence[Row], env: Mapping, path: Path) -> None:
    """``{"environment": env, "rows": [...]}``; missing numbers are null."""
    path.write_text(json.dumps({"environment": dict(env), "rows": [r.as_dict() for r in rows]}, indent=1) + "\n")


def _num(value: float | None, suffix: str = "") -> str:
    return "–" if value is None else f"{value:.3g}{suffix}"


def _spread(row: Row, mode: str) -> str:
    median = getattr(row, f"{mode}_ms")
    if median is None:
        return "–"
    return f"{median:.3g} [{getattr(row, f'{mode}_p20_ms'):.3g}-{getattr(row, f'{mode}_p80_ms'):.3g}]"


def _measured(row: Row) -> bool:
    return row.fwd_ms is not None


def _md_row(row: Row, differentiable: bool) -> str:
    mode = "fwdbwd" if differentiable else "fwd"
    tokens = f"{row.n} ({row.layout})" if row.layout else str(row.n)
    cells = (
        row.impl, tokens, str(row.h), str(row.v), row.dtype, row.status.replace("|", "/"),
        _num(row.fwd_ms), _num(row.bwd_ms), _spread(row, mode), _num(getattr(row, f"{mode}_tflops")),
        _num(row.roofline_pct), _num(row.peak_mib), _num(row.extra_mib),
        _num(row.time_vs_fusedrl, "x"), _num(row.mem_vs_fusedrl, "x"),
    )
    return "| " + " | ".join(cells) + " |"


def markdown(rows: Sequence[Row], env: Mapping, ops: Sequence[OpSpec], plots: Mapping[str, list[str]]) -> str:
    """The results page: environment, column legend, then one table (and its plots) per op."""
    lines = ["# fusedrl benchmark results", "", "| environment | |", "| --- | --- |"]
    lines += [f"| {k} | {v if v not in (None, '') else '–'} |" for k, v in env.items()]
    lines += [
        "",
        "Times are medians in ms over the repeats (p20-p80 in brackets). TFLOP/s count 2·N·H·V forward and "
        "6·N·H·V backward (DPO and GRPO add 2·N·H·V for the reference forward; torch.matmul counts its real "
        "2 + 4·N·H·V); for no-grad ops (topk) the forward. `% matmul` compares with the torch.matmul row of the "
        "same shape. `peak MiB` is the peak above the inputs, `extra MiB` the same minus the gradients. "
        "`x fusedrl` divides by fusedrl's time / peak. Rows that did not run are listed under each table. "
        "See bench/README.md.",
    ]
    for op in ops:
        op_rows = [r for r in rows if r.op == op.name]
        if not op_rows:
            continue
        lines += ["", f"## {op.name}: {op.title}"]
        measured = [r for r in op_rows if _measured(r)]
        if measured:
            lines += ["", "| " + " | ".join(MD_COLUMNS) + " |", "|" + "---|" * len(MD_COLUMNS)]
            lines += [_md_row(r, op.differentiable) for r in measured]
        not_run = Counter((r.impl, r.status) for r in op_rows if not _measured(r))
        if not_run:
            lines += ["", "Not measured:"]
            lines += [f"- {impl}: {status} ({count} case{'s' if count > 1 else ''})"
                      for (impl, status), count in not_run.items()]
        for png in plots.get(op.name, []):
            lines += ["", f"![{op.name}]({png})"]
    return "\n".join(lines) + "\n"


def write_all(rows: Sequence[Row], env: Mapping, ops: Sequence[OpSpec], plots: Mapping[str, list[str]],
              out: Path) -> list[Path]:
    """Write CSV, JSON and Markdown into ``out``; return their paths."""
    paths = [out / CSV_NAME, out / JSON_NAME, out / MD_NAME]
    write_csv(rows, paths[0])
    write_json(rows, env, paths[1])
    paths[2].write_text(markdown(rows, env, ops, plots))
    return paths
