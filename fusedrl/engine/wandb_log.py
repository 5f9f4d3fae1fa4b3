"""Weights & Biases logging (``wandb_project``): the run's metrics, its config and its text samples.

Metrics go under ``train/`` and ``eval/`` against the step ``train/global_step`` (as the Hugging Face
Trainer logs them), so a resumed run that logs steps again is plotted, not dropped. The W&B run id is kept
in every checkpoint: resuming continues the same W&B run.
"""
from __future__ import annotations

import dataclasses
import importlib.util

STEP_KEY = "train/global_step"
SAMPLE_COLUMNS = ["step", "name", "text"]


def check_wandb_installed(project: str | None) -> None:
    """Fail before any model loads when ``wandb_project`` is set and wandb cannot be imported."""
    if project is not None and importlib.util.find_spec("wandb") is None:
        raise ValueError(f"wandb_project: logging to Weights & Biases ({project!r}) needs the wandb package "
                         f"(pip install wandb), or leave wandb_project unset")


class WandbRun:
    """One W&B run: ``log`` metrics at a step, ``log_text`` samples (a table of every sample so far), ``finish``."""

    def __init__(self, config, resume_id: str | None = None):
        """Start (or, with ``resume_id``, continue) the run named by ``config``'s ``wandb_*`` keys; its files go
        to ``output_dir/wandb``."""
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=config.wandb_project, entity=config.wandb_entity, name=config.wandb_name, mode=config.wandb_mode,
            dir=config.output_dir, config=dataclasses.asdict(config), id=resume_id,
            resume="allow" if resume_id else None,
        )
        self.run.define_metric(STEP_KEY)
        self.run.define_metric("*", step_metric=STEP_KEY, step_sync=True)
        self.samples: list[list] = []

    @property
    def id(self) -> str:
        """The run id a checkpoint keeps, so a resumed run logs to the same W&B run."""
        return self.run.id

    def log(self, step: int, metrics: dict, prefix: str) -> None:
        """``metrics`` (floats) as ``prefix/name`` at ``step``."""
        self.run.log({STEP_KEY: step, **{f"{prefix}/{k}": float(v) for k, v in metrics.items()}})

    def log_text(self, step: int, name: str, text: str) -> None:
        """Add a text sample to the ``samples`` table (W&B tables are immutable: the whole table is logged)."""
        self.samples.append([step, name, text])
        self.run.log({STEP_KEY: step, "samples": self.wandb.Table(columns=SAMPLE_COLUMNS, data=list(self.samples))})

    def mark_preempting(self) -> None:
        """Show the run as preempted (a stop signal ended it; a resume continues it)."""
        self.run.mark_preempting()

    def finish(self) -> None:
        self.run.finish()
