"""``python -m bench`` / ``fusedrl bench``: run the kernel benchmark suite and write CSV, JSON, Markdown and plots."""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
from pathlib import Path

import torch

from fusedrl.kernels.dispatch import resolve_backend

from . import memory, plots, report
from .env import device_slug, environment
from .ops import IMPL_NAMES, OPS, op_by_name
from .presets import PRESETS, TARGET, default_preset, sweep
from .runner import RunConfig, run_suite

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_REPEATS = {"cuda": (3, 10), "cpu": (1, 3)}  # (warmup, repeats)
CPU_COMPILE_OFF = ("torch.compile is off on CPU by default: compile time dominates these shapes "
                   "(--compile on forces it)")


def _csv(kind):
    def parse(text: str):
        return [kind(item) for item in text.split(",") if item]
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (also used by ``fusedrl bench``)."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="named sweep (default: gpu-full on CUDA, cpu-smoke on CPU)")
    p.add_argument("--ops", type=_csv(str), help=f"comma list of ops (default all: {','.join(o.name for o in OPS)})")
    p.add_argument("--impls", type=_csv(str),
                   help=f"comma list of implementations besides fusedrl, which always runs (default all: "
                        f"{','.join(IMPL_NAMES[1:])})")
    p.add_argument("--n", type=_csv(int), help="token counts; any of --n/--h/--v/--dtype replaces the preset with "
                                               "their cartesian product (missing lists take the target shape)")
    p.add_argument("--h", type=_csv(int), help="hidden sizes")
    p.add_argument("--v", type=_csv(int), help="vocabulary sizes")
    p.add_argument("--dtype", type=_csv(str), help="dtypes: bf16, fp32")
    p.add_argument("--seq", type=int, default=1024, help="tokens per row for custom sweeps (default 1024)")
    p.add_argument("--prompt-fraction", type=float,
                   help="ignored share of each row's labels, its prompt (default 0.25; 0: every token has a label, "
                        "the kernels' efficiency against the roofline)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--warmup", type=int, help="untimed calls before the repeats (default 3 on CUDA, 1 on CPU)")
    p.add_argument("--repeats", type=int, help="timed calls per measure (default 10 on CUDA, 3 on CPU)")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="torch.compile of the eager code (auto: on for CUDA, off for CPU)")
    p.add_argument("--fusedrl-backend", choices=("auto", "triton", "torch"), default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: the preset's, else torch's default)")
    p.add_argument("--out", type=Path, help="output folder (default bench/results/<device>-<date>)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--list", action="store_true", help="print presets, ops and implementations, then exit")
    return p


def _listing() -> str:
    lines = ["presets:"] + [f"  {name}: {p.description}" for name, p in PRESETS.items()]
    lines += ["ops:"] + [f"  {op.name}: {op.title}" for op in OPS]
    lines += ["implementations: " + ", ".join(IMPL_NAMES)]
    return "\n".join(lines)


def _plan(args: argparse.Namespace, preset: str, ops) -> list:
    if _custom(args):
        cases = sweep(args.n or [16384], args.h or [TARGET["h"]], args.v or [TARGET["v"]],
                      args.dtype or [TARGET["dtype"]], seq=args.seq)
        plan = [(op, case) for op in ops for case in cases]
    else:
        plan = [(op, case) for op in ops for case in PRESETS[preset].cases_for(op.name)]
    if args.prompt_fraction is None:
        return plan
    return [(op, dataclasses.replace(case, prompt_fraction=args.prompt_fraction)) for op, case in plan]


def _validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    unknown = [name for name in args.impls or [] if name not in IMPL_NAMES]
    if unknown:
        parser.error(f"--impls: unknown {unknown}; known: {', '.join(IMPL_NAMES)}")
    bad_dtypes = [d for d in args.dtype or [] if d not in ("bf16", "fp32")]
    if bad_dtypes:
        parser.error(f"--dtype: unknown {bad_dtypes}; known: bf16, fp32")
    for name, least in (("warmup", 0), ("repeats", 1), ("threads", 1)):
        value = getattr(args, name)
        if value is not None and value < least:
            parser.error(f"--{name}: expected >= {least}, got {value}")
    if args.prompt_fraction is not None and not 0.0 <= args.prompt_fraction < 1.0:
        parser.error(f"--prompt-fraction: expected a value in [0, 1), got {args.prompt_fraction}")


def _custom(args: argparse.Namespace) -> bool:
    return any(x is not None for x in (args.n, args.h, args.v, args.dtype))


def _run_config(args: argparse.Namespace, device: torch.device) -> RunConfig:
    warmup, repeats = DEFAULT_REPEATS["cuda" if device.type == "cuda" else "cpu"]
    return RunConfig(
        device=device,
        warmup=warmup if args.warmup is None else args.warmup,
        repeats=repeats if args.repeats is None else args.repeats,
        fusedrl_backend=args.fusedrl_backend,
        compile=args.compile == "on" or (args.compile == "auto" and device.type == "cuda"),
        compile_off_reason=CPU_COMPILE_OFF if args.compile == "auto" else "torch.compile disabled (--compile off)",
        impls=frozenset(args.impls) if args.impls else None,
    )


def _collect(plan: list, cfg: RunConfig) -> tuple[list, int]:
    """``(rows, cases done)``; an interrupt (Ctrl-C, ``timeout -s INT``) stops the suite but keeps the rows."""
    rows, done = [], 0
    try:
        for case_rows in run_suite(plan, cfg):
            rows.extend(case_rows)
            done += 1
    except KeyboardInterrupt:
        print(f"bench: interrupted after {done} of {len(plan)} cases; writing what was measured", flush=True)
    return rows, done


def _write_outputs(rows, ops, cfg: RunConfig, args: argparse.Namespace, preset: str, argv, plan: list,
                   cases: str) -> None:
    device = cfg.device
    out = args.out or RESULTS / f"{device_slug(device)}-{datetime.date.today().isoformat()}"
    out.mkdir(parents=True, exist_ok=True)
    plot_note = "off (--no-plots)" if args.no_plots else plots.matplotlib_missing()
    pngs = {} if plot_note else {op.name: plots.plot_op(op, [r for r in rows if r.op == op.name], out) for op in ops}
    env = environment(device, {
        "preset": "custom" if _custom(args) else preset,
        "ops": ",".join(op.name for op in ops),
        "cases": cases,
        "prompt_fraction": sorted({case.prompt_fraction for _, case in plan}),
        "warmup": cfg.warmup,
        "repeats": cfg.repeats,
        "torch_compile": "on" if cfg.compile else "off",
        "fusedrl_backend": resolve_backend(cfg.fusedrl_backend, device),
        "memory_method": memory.METHODS["cuda" if device.type == "cuda" else "cpu"],
        "plots": plot_note or "on",
        "command": " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)]),
    })
    written = report.write_all(rows, env, ops, pngs, out)
    written += [out / name for names in pngs.values() for name in names]
    for path in written:
        print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    """Run the suite as the command line says; returns the exit status (0 on success, 2 on usage errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        print(_listing())
        return 0
    _validate(args, parser)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    try:
        ops = [op_by_name(name) for name in args.ops] if args.ops else list(OPS)
    except KeyError as err:
        parser.error(f"--ops: {err.args[0]}")
    preset = args.preset or default_preset(device.type)
    cfg = _run_config(args, device)
    plan = _plan(args, preset, ops)
    threads = args.threads or (None if _custom(args) else PRESETS[preset].cpu_threads)
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        print(f"bench: {len(plan)} cases on {device} (preset {'custom' if _custom(args) else preset})", flush=True)
        rows, done = _collect(plan, cfg)
        _write_outputs(rows, ops, cfg, args, preset, argv, plan, f"{done} of {len(plan)}")
    finally:
        torch.set_num_threads(saved_threads)
    return 0
