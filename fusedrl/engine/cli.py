"""Command line: ``fusedrl train CONFIG.yaml [--key value ...]`` (also ``python -m fusedrl``)."""
from __future__ import annotations

import argparse
import logging
import sys

from .config import ConfigError, load_config


def summary_table(before: dict, after: dict, keys: tuple[str, ...]) -> str:
    """A small fixed-width table of held-out metrics before and after training."""
    rows = [k for k in keys if k in before or k in after]
    if not rows:
        return ""
    width = max(len(k) for k in rows)
    lines = [f"{'held-out metric':<{width}}  {'before':>10}  {'after':>10}", "-" * (width + 24)]
    for k in rows:
        b = f"{before[k]:.4f}" if k in before else "-"
        a = f"{after[k]:.4f}" if k in after else "-"
        lines.append(f"{k:<{width}}  {b:>10}  {a:>10}")
    return "\n".join(lines)


def _train(args: argparse.Namespace, overrides: list[str]) -> int:
    from .algorithms import algorithm_class
    from .trainer import train

    config = load_config(args.config, overrides)
    result = train(config)
    keys = algorithm_class(config.rl).summary_keys
    print(summary_table(result.eval_before, result.eval_after, keys))
    print(f"outputs: {result.output_dir} (metrics.jsonl, final/, "
          f"{result.plot.name if result.plot else 'no plot'})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fusedrl`` console script."""
    parser = argparse.ArgumentParser(prog="fusedrl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train with a YAML config; any key can be overridden with --key value")
    p_train.add_argument("config")
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "datasets", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        return _train(args, extra)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        logging.getLogger(__name__).debug("traceback of the error below", exc_info=True)
        print(f"fusedrl: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
