"""``fusedrl export``: a training checkpoint as the Hugging Face model folder ``final/`` would be at its step.

Checkpoints are for resuming: under ``fsdp: true`` they hold each rank's shards, and with LoRA the adapter
only. Exporting builds the run's model from its config, loads the checkpoint's weights (joining the shards)
and writes it as the trainer writes ``final/`` (LoRA: the adapter and the merged model; PPO: with
``value_model/``; reward models: with ``value_head.safetensors``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .algorithms import build_algorithm
from .checkpoint import load_whole_weights, resolve_resume_path, write_folder_atomically
from .config import TrainConfig


def export_checkpoint(config: TrainConfig, checkpoint: Path, out: Path) -> Path:
    """Write ``checkpoint`` (a folder, or ``latest`` in ``config.output_dir``) of the run ``config`` describes
    to ``out`` as a Hugging Face model folder, on the CPU; returns ``out``."""
    folder = resolve_resume_path(config.output_dir, str(checkpoint))
    if folder is None:
        raise FileNotFoundError(f"checkpoint: no checkpoint in {config.output_dir} to export")
    algorithm = build_algorithm(config, torch.device("cpu"))
    load_whole_weights(folder, algorithm.model)
    write_folder_atomically(out, lambda tmp: algorithm.save_final(tmp, algorithm.model))
    return out
