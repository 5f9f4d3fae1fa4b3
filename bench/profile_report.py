"""Writes a profile (``bench.profile``) as CSV, JSON and Markdown, and the short text printed at the end."""
from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .profiling import PHASES

if TYPE_CHECKING:
    from .profile import ImplProfile

CSV_NAME, JSON_NAME, MD_NAME = "profile.csv", "profile.json", "profile.md"
CSV_COLUMNS = ("op", "impl", "phase", "kernel", "calls_per_step", "ms_per_step", "pct")
NAME_WIDTH = 90


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _pct(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else 0.0


def _short(name: str, width: int = NAME_WIDTH) -> str:
    name = name.replace("|", "/")
    return name if len(name) <= width else name[: width - 1] + "…"


def summary_line(p: ImplProfile) -> str:
    """One line: status, unprofiled fwd+bwd, profiled time per step by phase, the top kernel."""
    head = f"{p.op:<9} {p.impl:<14} {p.status}"
    if not p.kernels:
        return head
    present = {k.phase for k in p.kernels}
    phases = ", ".join(f"{ph} {p.busy_ms(ph):.3g}" for ph in PHASES if ph in present)
    top = p.kernels[0]
    timed = f"fwd+bwd {_ms(p.fwdbwd_ms)}" if p.fwdbwd_ms is not None else f"fwd {_ms(p.fwd_ms)}"
    return (f"{head}  {timed} ms  profiled {p.busy_ms():.3g} ms/step ({phases})  "
            f"top: {_short(top.name, 60)} {top.ms:.3g} ms ({_pct(top.ms, p.busy_ms()):.0f}%)")


def digest(results: Sequence[ImplProfile], top: int) -> str:
    """Every implementation's summary line and its ``top`` kernels (the end of the console output)."""
    lines = ["== profile digest (ms per step; % of the implementation's profiled time) =="]
    for p in results:
        lines.append(summary_line(p))
        lines += [f"    {k.ms:8.3f} ms {_pct(k.ms, p.busy_ms()):5.1f}%  {k.calls:g}x  {k.phase:<5} {_short(k.name)}"
                  for k in p.kernels[:top]]
    return "\n".join(lines)


def _markdown(results: Sequence[ImplProfile], env: Mapping, top: int) -> str:
    lines = ["# fusedrl kernel profile", "", "| environment | |", "| --- | --- |"]
    lines += [f"| {k} | {v if v not in (None, '') else '–'} |" for k, v in env.items()]
    lines += ["", "Times in ms. `fwd`, `bwd`, `fwd+bwd`: unprofiled medians of the suite's timing. `profiled`: "
              "device kernel time per profiled step (CPU: self time of the ops), by phase; `other` is time that "
              "started outside both phases. See bench/README.md.", "",
              "| op | impl | status | fwd | bwd | fwd+bwd | profiled | fwd phase | bwd phase | top kernel |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for p in results:
        first = p.kernels[0] if p.kernels else None
        top_kernel = f"{_short(first.name, 60)} ({_pct(first.ms, p.busy_ms()):.0f}%)" if first else "–"
        busy = [_ms(p.busy_ms(ph)) if p.kernels else "–" for ph in (None, "fwd", "bwd")]
        lines.append(f"| {p.op} | {p.impl} | {p.status.replace('|', '/')} | {_ms(p.fwd_ms)} | {_ms(p.bwd_ms)} | "
                     f"{_ms(p.fwdbwd_ms)} | {' | '.join(busy)} | {top_kernel} |")
    for p in (p for p in results if p.kernels):
        lines += ["", f"## {p.op} / {p.impl}", "", "| phase | kernel | calls/step | ms/step | % |",
                  "|---|---|---|---|---|"]
        lines += [f"| {k.phase} | `{_short(k.name)}` | {k.calls:g} | {k.ms:.4g} | {_pct(k.ms, p.busy_ms()):.1f} |"
                  for k in p.kernels[:top]]
        rest = p.kernels[top:]
        if rest:
            ms = sum(k.ms for k in rest)
            lines.append(f"| | {len(rest)} more | | {ms:.4g} | {_pct(ms, p.busy_ms()):.1f} |")
    return "\n".join(lines) + "\n"


def write_all(results: Sequence[ImplProfile], env: Mapping, top: int, out: Path) -> list[Path]:
    """profile.csv (every kernel), profile.json (environment and results), profile.md; returns the paths."""
    paths = [out / CSV_NAME, out / JSON_NAME, out / MD_NAME]
    with paths[0].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for p in results:
            writer.writerows((p.op, p.impl, k.phase, k.name, k.calls, f"{k.ms:.6g}", f"{_pct(k.ms, p.busy_ms()):.3g}")
                             for k in p.kernels)
    paths[1].write_text(json.dumps({"environment": dict(env), "results": [p.as_dict() for p in results]}, indent=1)
                        + "\n")
    paths[2].write_text(_markdown(results, env, top))
    return paths
