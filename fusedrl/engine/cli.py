"""Command line (also ``python -m fusedrl``).

- ``fusedrl train CONFIG.yaml [--key value ...]``: train (any config key can be overridden).
- ``fusedrl kd-extract --teacher M --dataset D --top-k 64 --output DIR``: teacher top-k targets for ``rl: kd``.
- ``fusedrl export CONFIG.yaml CHECKPOINT OUT [--key value ...]``: a checkpoint as a Hugging Face model folder.
- ``fusedrl env``: versions, devices and kernel paths, for bug reports.
- ``fusedrl bench [...]``: the kernel benchmarks of ``bench/`` (run from a checkout).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .config import ConfigError, load_config
from .data.loading import looks_local
from .preemption import Preempted
from .rewards import RewardFunctionError


def summary_table(columns: dict[str, dict], keys) -> str:
    """A small fixed-width table of held-out metrics: a row per key of ``keys`` that some column has, a
    column per ``columns`` entry (name -> metrics), e.g. before and after training."""
    rows = [k for k in keys if any(k in metrics for metrics in columns.values())]
    if not rows:
        return ""
    width = max(len(k) for k in rows)
    cell = max(10, *(len(name) for name in columns))
    lines = [f"{'held-out metric':<{width}}" + "".join(f"  {name:>{cell}}" for name in columns),
             "-" * (width + (cell + 2) * len(columns))]
    for k in rows:
        cells = [f"{metrics[k]:.4f}" if k in metrics else "-" for metrics in columns.values()]
        lines.append(f"{k:<{width}}" + "".join(f"  {value:>{cell}}" for value in cells))
    return "\n".join(lines)


def _check_model_paths(config) -> None:
    """Before any model loads: a model path that looks local (``looks_local``) but is missing fails, naming
    its key, and so do missing KD teacher targets (always local: ``fusedrl kd-extract`` writes them)."""
    for key in ("base_model", "tokenizer", "ref_model", "reward_model", "kd_teacher"):
        value = getattr(config, key)
        if value is not None and looks_local(value) and not Path(value).exists():
            raise ValueError(f"{key}: local model folder not found: {value!r}")
    for i, entry in enumerate(config.datasets if config.rl == "kd" and config.kd_teacher is None else []):
        if not Path(entry["path"]).exists():
            raise ValueError(f"datasets[{i}].path: teacher targets not found: {entry['path']!r} (write them with "
                             "`fusedrl kd-extract --output ...` first)")


def _is_main_rank() -> bool:
    """Rank 0 under torchrun (its ``RANK``), or a single process: the one that prints."""
    return os.environ.get("RANK", "0") == "0"


def _train(args: argparse.Namespace, overrides: list[str]) -> int:
    from .algorithms import algorithm_class
    from .trainer import train

    config = load_config(args.config, overrides)
    _check_model_paths(config)
    result = train(config)
    if not _is_main_rank():
        return 0
    keys = algorithm_class(config.rl).summary_keys
    print(summary_table({"before": result.eval_before, "after": result.eval_after}, keys))
    print(f"outputs: {result.output_dir} (metrics.jsonl, final/, "
          f"{result.plot.name if result.plot else 'no plot'})")
    return 0


def _eval(args: argparse.Namespace, overrides: list[str]) -> int:
    from .trainer import evaluate_config

    config = load_config(args.config, overrides)
    _check_model_paths(config)
    metrics = evaluate_config(config)
    if not _is_main_rank():
        return 0
    print(summary_table({Path(config.base_model).name or config.base_model: metrics}, list(metrics)))
    if args.out:
        Path(args.out).write_text(json.dumps({"base_model": config.base_model, "rl": config.rl, **metrics}, indent=1))
    return 0


def _export(args: argparse.Namespace, overrides: list[str]) -> int:
    from .export import export_checkpoint

    config = load_config(args.config, overrides)
    _check_model_paths(config)
    print(f"{args.checkpoint} exported to {export_checkpoint(config, Path(args.checkpoint), Path(args.out))}")
    return 0


def _kd_extract(args: argparse.Namespace, extra: list[str]) -> int:
    from .kd_extract import config_from_args, extract

    if extra:
        raise ConfigError(f"kd-extract: unknown arguments {extra}")
    out = extract(config_from_args(args))
    if _is_main_rank():
        print(f"teacher top-k targets written to {out}")
    return 0


def _env(args: argparse.Namespace, extra: list[str]) -> int:
    from .env_report import environment_report, format_report

    if extra:
        raise ConfigError(f"env: unknown arguments {extra}")
    print(format_report(environment_report()))
    return 0


def _bench(args: argparse.Namespace, extra: list[str]) -> int:
    try:
        from bench import main as bench_main
    except ImportError as err:
        raise FileNotFoundError(f"fusedrl bench runs the bench/ suite of a fusedrl checkout: run it from the "
                                f"repository root ({err})") from None
    return bench_main(extra)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fusedrl`` console script."""
    from .kd_extract import add_arguments

    parser = argparse.ArgumentParser(prog="fusedrl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train with a YAML config; any key can be overridden with --key value",
                             description="Train with a YAML config. Any key can be overridden with --key value "
                             "(or --key=value); docs/config.md lists every key.")
    p_train.add_argument("config")
    p_eval = sub.add_parser(
        "eval", help="held-out metrics of base_model under the config's algorithm, without training",
        description="Evaluate base_model (override it to score a trained model: --base_model outputs/run/final) on "
        "the config's held-out set (test_datasets, or the val_set_size split) with its algorithm's loss and "
        "metrics, exactly as a training run logs them before its first step. Any key can be overridden with "
        "--key value.")
    p_eval.add_argument("config")
    p_eval.add_argument("--out", help="also write the metrics to this JSON file")
    p_export = sub.add_parser(
        "export", help="a training checkpoint as a Hugging Face model folder, as final/ would be at its step",
        description="Write a checkpoint of the run CONFIG describes (the same config and overrides as its "
        "`fusedrl train`) as a Hugging Face model folder, as final/ is written: sharded (fsdp) checkpoints are "
        "joined, LoRA adapters also merged. Runs on the CPU and loads the run's models (the reference too).")
    p_export.add_argument("config")
    p_export.add_argument("checkpoint", help="a checkpoint-<step> folder, or `latest` in the config's output_dir")
    p_export.add_argument("out", help="the folder to write (replaced if it exists)")
    add_arguments(sub.add_parser("kd-extract", help="teacher top-k logprobs as Parquet shards for rl: kd"))
    sub.add_parser("env", help="versions, devices and the kernel paths this machine takes (for bug reports)")
    sub.add_parser("bench", help="kernel benchmarks (bench/; see bench/README.md)", add_help=False)
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO if _is_main_rank() else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "datasets", "transformers", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if not _is_main_rank():
        import datasets

        datasets.disable_progress_bars()
    commands = {"train": _train, "eval": _eval, "export": _export, "kd-extract": _kd_extract, "env": _env,
                "bench": _bench}
    try:
        return commands[args.command](args, extra)
    except Preempted as stop:
        if _is_main_rank():
            print(f"fusedrl: {stop}", file=sys.stderr)
        return 128 + stop.signum
    except (ConfigError, FileNotFoundError, ValueError, RewardFunctionError) as err:
        logging.getLogger(__name__).debug("traceback of the error below", exc_info=True)
        print(f"fusedrl: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
