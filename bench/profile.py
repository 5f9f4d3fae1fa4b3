"""``python -m bench.profile``: where the time of each implementation goes, kernel by kernel.

Per op and implementation: warm-up with the suite's timing (whose medians are reported, unprofiled), then
torch.profiler over ``--steps`` forward+backward steps; writes profile.csv, profile.json and profile.md (one
table per implementation: kernel, phase, calls and ms per step, share of the profiled time), plus one Chrome
trace per implementation with ``--trace``. On CPU the "kernels" are torch ops and their self CPU time.
"""
from __future__ import annotations

import argparse
import datetime
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import profile_report
from .cli import DEFAULT_REPEATS, RESULTS
from .env import device_slug, environment
from .ops import IMPL_NAMES, op_by_name
from .presets import TARGET
from .profiling import KernelStat, profile_steps, write_trace
from .runner import RunConfig, availability, clear_grads, error_status, free_memory, time_modes
from .spec import DTYPES, BuildOptions, Case, ImplSpec, Inputs, OpSpec

NOT_BY_DEFAULT = ("torch.compile",)  # profiled only when named in --impls


@dataclass
class ImplProfile:
    """One implementation of one op: its status, unprofiled median times (ms) and kernel statistics."""

    op: str
    impl: str
    status: str
    fwd_ms: float | None = None
    bwd_ms: float | None = None
    fwdbwd_ms: float | None = None
    kernels: list[KernelStat] = field(default_factory=list)

    def busy_ms(self, phase: str | None = None) -> float:
        """Profiled milliseconds per step, of one phase or all."""
        return sum(k.ms for k in self.kernels if phase in (None, k.phase))

    def as_dict(self) -> dict:
        """A plain dict (JSON)."""
        return asdict(self)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", "--op", default="ce", help="comma list of ops (default ce)")
    p.add_argument("--impls", help=f"comma list (default all but {', '.join(NOT_BY_DEFAULT)}; known: "
                                   f"{', '.join(IMPL_NAMES)})")
    p.add_argument("--n", type=int, default=16384, help="tokens (default 16384)")
    p.add_argument("--h", type=int, default=TARGET["h"], help=f"hidden size (default {TARGET['h']})")
    p.add_argument("--v", type=int, default=TARGET["v"], help=f"vocabulary (default {TARGET['v']})")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=TARGET["dtype"])
    p.add_argument("--seq", type=int, default=1024, help="tokens per row (default 1024)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--warmup", type=int, help="untimed calls before the timed ones (default 3 CUDA, 1 CPU)")
    p.add_argument("--repeats", type=int, help="timed calls per mode (default 10 CUDA, 3 CPU)")
    p.add_argument("--steps", type=int, default=3, help="profiled forward+backward steps (default 3)")
    p.add_argument("--trace", action="store_true", help="also write one step per implementation as a Chrome trace")
    p.add_argument("--top", type=int, default=12, help="kernels per implementation in profile.md (default 12)")
    p.add_argument("--print-top", type=int, default=5,
                   help="kernels per implementation in the digest printed last (default 5)")
    p.add_argument("--fusedrl-backend", choices=("auto", "triton", "torch"), default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--out", type=Path, help="output folder (default bench/results/profile-<device>-<date>)")
    return p


def _impl_names(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    if not args.impls:
        return [name for name in IMPL_NAMES if name not in NOT_BY_DEFAULT]
    names = [name for name in args.impls.split(",") if name]
    unknown = [name for name in names if name not in IMPL_NAMES]
    if unknown:
        parser.error(f"--impls: unknown {unknown}; known: {', '.join(IMPL_NAMES)}")
    return names


def _profile_impl(op: OpSpec, spec: ImplSpec, inputs: Inputs, cfg: RunConfig, steps: int,
                  trace: Path | None) -> ImplProfile:
    result = ImplProfile(op.name, spec.name, availability(spec, cfg))
    if result.status:
        return result
    try:
        with spec.scoped_env():
            impl = spec.build(BuildOptions(cfg.device, cfg.fusedrl_backend, cfg.compile))
            timings = time_modes(op, impl, inputs, cfg)  # the warm-up, and the unprofiled medians
            for mode, timing in timings.items():
                setattr(result, f"{mode}_ms", timing.median_ms)
            result.kernels = profile_steps(op, impl, inputs, cfg.device, steps)
            result.status = "ok"
            if trace is not None:
                write_trace(op, impl, inputs, cfg.device, trace)
    except Exception as err:  # reported, never raised: one failure must not hide the others
        result.status = "; ".join(filter(None, (result.status, error_status(err))))
    finally:
        clear_grads(inputs)
        free_memory(cfg.device)
    return result


def _profile_op(op: OpSpec, case: Case, names: list[str], cfg: RunConfig, steps: int,
                traces: Path | None) -> list[ImplProfile]:
    specs = [spec for spec in op.impls if spec.name in names]
    reason = op.unavailable()
    if not reason:
        try:
            case.layout(pairs=op.pairs)
        except ValueError as err:
            reason = str(err)
    if reason:
        return [ImplProfile(op.name, spec.name, f"unavailable: {reason}") for spec in specs]
    inputs = op.make_inputs(case, cfg.device)
    results = []
    for spec in specs:
        trace = None if traces is None else traces / f"trace-{op.name}-{spec.name}.json.gz"
        results.append(_profile_impl(op, spec, inputs, cfg, steps, trace))
        print(profile_report.summary_line(results[-1]), flush=True)
    del inputs
    free_memory(cfg.device)
    return results


def main(argv: list[str] | None = None) -> int:
    """Profile as the command line says; returns the exit status (0 on success, 2 on usage errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    names = _impl_names(args, parser)
    try:
        ops = [op_by_name(name) for name in args.ops.split(",") if name]
    except KeyError as err:
        parser.error(f"--ops: {err.args[0]}")
    if args.steps < 1:
        parser.error("--steps: expected >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    warmup, repeats = DEFAULT_REPEATS[device.type]
    cfg = RunConfig(device=device, warmup=warmup if args.warmup is None else args.warmup,
                    repeats=repeats if args.repeats is None else args.repeats,
                    fusedrl_backend=args.fusedrl_backend, compile="torch.compile" in names)
    case = Case(args.n, args.h, args.v, args.dtype, args.seq)
    out = args.out or RESULTS / f"profile-{device_slug(device)}-{datetime.date.today().isoformat()}"
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"profile: {len(ops)} op(s) x {len(names)} implementation(s) on {device}, N={case.n} H={case.h} "
          f"V={case.v} {case.dtype}, {args.steps} step(s)", flush=True)
    results: list[ImplProfile] = []
    try:
        for op in ops:
            results += _profile_op(op, case, names, cfg, args.steps, out if args.trace else None)
    except KeyboardInterrupt:
        print(f"profile: interrupted after {len(results)} implementation(s); writing what was measured", flush=True)
    env = environment(device, {
        "case": f"N={case.n} H={case.h} V={case.v} {case.dtype} seq={case.seq}",
        "steps": args.steps, "warmup": cfg.warmup, "repeats": cfg.repeats,
        "time": "CUDA kernel time (device activity)" if cuda else "self CPU time per op",
        "command": " ".join(["python -m bench.profile", *(sys.argv[1:] if argv is None else argv)]),
    })
    for path in profile_report.write_all(results, env, args.top, out):
        print(f"wrote {path}")
    print(profile_report.digest(results, top=args.print_top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
