"""Training-time logging: JSONL metrics, TensorBoard, text samples, and the final PNG plot."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

log = logging.getLogger(__name__)


class MetricsLog:
    """Appends one JSON object per logged step to ``metrics.jsonl`` (and TensorBoard when available, and a
    Weights & Biases run when given one: ``wandb_log.WandbRun``).

    ``resume_step``: the checkpoint step a resumed run starts from (later records are dropped);
    None for a fresh run, which starts the files empty even if an earlier run wrote there.
    ``enabled=False`` (data-parallel ranks other than 0) writes nothing.
    """

    def __init__(self, output_dir: str | Path, tensorboard: bool = True, resume_step: int | None = None,
                 enabled: bool = True, wandb_run=None):
        self.enabled, self.writer, self.wandb_run = enabled, None, wandb_run
        if not enabled:
            return
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        self._truncate_after(-1 if resume_step is None else resume_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.dir / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed: metrics go to metrics.jsonl only")

    def _truncate_after(self, step: int) -> None:
        """Drop metrics and samples past ``step`` so each file reads as one run."""
        for path in (self.path, self.dir / "samples.jsonl"):
            if path.exists():
                kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
                path.write_text("".join(line + "\n" for line in kept))

    def write(self, step: int, metrics: dict, prefix: str = "train") -> None:
        """Record ``metrics`` (floats) at ``step`` under ``prefix`` (``train`` or ``eval``)."""
        if not self.enabled:
            return
        record = {"step": step, "split": prefix, **{k: float(v) for k, v in metrics.items()}}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(f"{prefix}/{key}", float(value), step)
        if self.wandb_run is not None:
            self.wandb_run.log(step, metrics, prefix)

    def write_text(self, step: int, name: str, text: str) -> None:
        """Log a text sample (e.g. generations) to ``samples.jsonl`` and TensorBoard."""
        if not self.enabled:
            return
        with (self.dir / "samples.jsonl").open("a") as fh:
            fh.write(json.dumps({"step": step, "name": name, "text": text}) + "\n")
        if self.writer is not None:
            self.writer.add_text(name, text, step)
        if self.wandb_run is not None:
            self.wandb_run.log_text(step, name, text)

    def records(self) -> list[dict]:
        """Every record written so far."""
        if not self.enabled or not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def plot_curves(records: list[dict], keys: list[str], out_path: str | Path) -> Path | None:
    """PNG of ``keys`` against step, train and eval lines per key; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no training-curve plot")
        return None
    keys = [k for k in keys if any(k in r for r in records)]
    if not keys:
        return None
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for split, style in (("train", "-"), ("eval", "o-")):
            pts = [(r["step"], r[key]) for r in records if r.get("split") == split and key in r]
            if pts:
                ax.plot(*zip(*pts), style, label=split, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.legend()
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return Path(out_path)
