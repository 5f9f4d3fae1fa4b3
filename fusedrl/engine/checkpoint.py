"""Atomic, pickle-free checkpoints that resume exactly.

A checkpoint is a folder ``checkpoint-<step>`` holding the model in Hugging Face
format (safetensors; a LoRA adapter when training one), ``optimizer.safetensors``
plus ``optimizer.json`` (AdamW moments and param groups), ``trainer_state.json``
(step, data position, scheduler step, algorithm state, world size) and each rank's
own state: ``rng.safetensors`` (torch CPU/CUDA generator states), ``rank_state.json``
(python RNG, the round's pending updates without their tensors) and, when taken
inside a round, ``round.safetensors`` (those updates' tensors: the rollout still to
train on). Rank 0's lie in the folder itself, rank ``r``'s in ``rank-<r>/``. Under
``fsdp: true`` every rank writes its own shards of the model (``model_shard.safetensors``)
and of the optimizer into its folder instead, with no gathering (the final model is
written whole). A reference model that training changes (``sync_ref_model``) is saved
beside the model: ``reference/`` in Hugging Face format, or each rank's
``reference_shard.safetensors`` under fsdp. A checkpoint is written to a temporary
sibling folder and renamed into place, so an interrupted save leaves the previous
checkpoint intact.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .distributed import Ranks
from .models import load_weights
from .sharding import like_parameter, load_local_tensors, local_tensors

log = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TMP_PREFIX = ".tmp-checkpoint-"
ROUND_FILE = "round.safetensors"
MODEL_SHARD_FILE = "model_shard.safetensors"
REFERENCE_FOLDER = "reference"
REFERENCE_SHARD_FILE = "reference_shard.safetensors"
RANK_STATE_FILE = "rank_state.json"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``output_dir``, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def claim_output_dir(output_dir: str | Path, resume: Path | None, overwrite: bool, ranks: Ranks) -> None:
    """Make sure a run's checkpoints cannot mix with an earlier run's in ``output_dir``.

    A run that does not resume from one of ``output_dir``'s checkpoints refuses to start where checkpoints
    exist (pruning would delete the new run's lower-numbered checkpoints and keep the old ones, and
    ``latest`` would resume the old run), unless ``overwrite`` (``overwrite_output_dir``): then rank 0
    deletes them. Every rank calls it.
    """
    found = list_checkpoints(output_dir)
    if not found or (resume is not None and resume.resolve().parent == Path(output_dir).resolve()):
        return
    names = ", ".join(p.name for p in found)
    if not overwrite:
        raise ValueError(
            f"output_dir: {output_dir} holds checkpoints of an earlier run ({names}); continue that run with "
            f"resume_from_checkpoint: latest, start over with overwrite_output_dir: true (deletes them), or "
            f"choose another output_dir")
    if ranks.is_main:
        log.warning("overwrite_output_dir: deleting the earlier run's checkpoints in %s: %s", output_dir, names)
        for path in found:
            shutil.rmtree(path)
    ranks.barrier()


def resolve_resume_path(output_dir: str | Path, resume: str | None) -> Path | None:
    """``resume`` may be None, ``"latest"`` (newest complete checkpoint, if any) or a folder path."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not path.exists():
        raise FileNotFoundError(f"resume_from_checkpoint: {path} not found (checkpoints in {output_dir}: "
                                f"{[p.name for p in list_checkpoints(output_dir)] or 'none'})")
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"resume_from_checkpoint: {path} is not a complete checkpoint (no trainer_state.json)")
    return path


def _save_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """AdamW state as ``optimizer.safetensors`` (this rank's shards under FSDP) plus ``optimizer.json``."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    save_file(local_tensors(tensors), str(folder / "optimizer.safetensors"))
    (folder / "optimizer.json").write_text(json.dumps({"param_groups": state["param_groups"], "scalars": scalars}))


def _load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    tensors = load_file(str(folder / "optimizer.safetensors"))
    meta = json.loads((folder / "optimizer.json").read_text())
    params = [p for group in optimizer.param_groups for p in group["params"]]  # the state dict's numbering
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = like_parameter(value, params[int(idx)]) \
            if isinstance(value, torch.Tensor) else value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _rng_tensors() -> dict:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    return tensors


def _restore_rng(folder: Path, python_state) -> None:
    tensors = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = python_state
    random.setstate((version, tuple(internal), gauss))


def _rank_folder(folder: Path, ranks: Ranks) -> Path:
    return folder if ranks.is_main else folder / f"rank-{ranks.rank}"


def save_checkpoint(output_dir: str | Path, step: int, model, optimizer, trainer_state: dict,
                    save_total_limit: int | None = None, round_state: dict | None = None,
                    round_tensors: dict | None = None, ranks: Ranks | None = None, sharded: bool = False,
                    reference=None) -> Path:
    """Write ``checkpoint-<step>`` atomically (temporary folder, then rename) and prune old ones.

    Every rank calls it: each writes its own state (``round_state`` json, ``round_tensors`` name -> CPU
    tensor when not empty, its RNG, and when ``sharded`` its model and optimizer shards); rank 0 writes the
    shared files and renames the folder into place. ``reference``: a reference model to keep too (one that
    ``sync_ref_model`` changes).
    """
    ranks = ranks or Ranks()
    root = Path(output_dir)
    tmp = root / f"{TMP_PREFIX}{step}"
    final = root / f"checkpoint-{step}"
    if ranks.is_main:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(TMP_PREFIX + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    ranks.barrier()
    own = _rank_folder(tmp, ranks)
    own.mkdir(exist_ok=True)
    save_file(_rng_tensors(), str(own / "rng.safetensors"))
    if round_tensors:
        save_file(round_tensors, str(own / ROUND_FILE))
    rank_state = {"round": round_state or {}, "python_rng": random.getstate()}
    (own / RANK_STATE_FILE).write_text(json.dumps(rank_state))
    if sharded:
        save_file(local_tensors(model.state_dict()), str(own / MODEL_SHARD_FILE))
        _save_optimizer(optimizer, own)
        if reference is not None:
            save_file(local_tensors(reference.state_dict()), str(own / REFERENCE_SHARD_FILE))
    ranks.barrier()
    if ranks.is_main:
        if not sharded:
            model.save_pretrained(str(tmp), safe_serialization=True)
            _save_optimizer(optimizer, tmp)
            if reference is not None:
                reference.save_pretrained(str(tmp / REFERENCE_FOLDER), safe_serialization=True)
        (tmp / "trainer_state.json").write_text(json.dumps({**trainer_state, "fsdp": sharded}, indent=1))
        _replace_folder(tmp, final)
        if save_total_limit:
            for old in list_checkpoints(root)[:-save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    ranks.barrier()
    return final


def write_folder_atomically(folder: Path, write) -> None:
    """``write(tmp)`` fills a temporary sibling of ``folder``, which then replaces ``folder``: an interrupted
    write leaves the previous contents (or nothing), never a half-written folder (the final model)."""
    tmp = folder.with_name(f".tmp-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    _replace_folder(tmp, folder)


def _replace_folder(tmp: Path, folder: Path) -> None:
    """Flush ``tmp`` to disk, then put it in ``folder``'s place (a previous ``folder`` goes)."""
    _fsync_tree(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def load_checkpoint(folder: Path, model, optimizer, ranks: Ranks | None = None, sharded: bool = False,
                    reference=None) -> dict:
    """Restore the model's weights, the optimizer, this rank's RNG states and, when given, the ``reference``
    model's weights (see ``save_checkpoint``) from ``folder``; return its trainer state with this rank's
    pending ``round``."""
    ranks = ranks or Ranks()
    state = json.loads((folder / "trainer_state.json").read_text())
    if state.get("world_size", 1) != ranks.world_size:
        raise ValueError(f"resume_from_checkpoint: {folder} was written by {state.get('world_size', 1)} ranks; "
                         f"resume it with as many (this run has {ranks.world_size})")
    if state.get("fsdp", False) != sharded:
        raise ValueError(f"resume_from_checkpoint: {folder} was written with fsdp: {state.get('fsdp', False)}; "
                         f"resume it with the same setting (this run has fsdp: {sharded})")
    own = _rank_folder(folder, ranks)
    rank_state = json.loads((own / RANK_STATE_FILE).read_text())
    if reference is not None:
        _load_reference(reference, folder, own, sharded)
    if sharded:
        load_local_tensors(model, load_file(str(own / MODEL_SHARD_FILE)), str(own / MODEL_SHARD_FILE))
        _load_optimizer(optimizer, own)
    else:
        load_weights(model, folder)
        _load_optimizer(optimizer, folder)
    _restore_rng(own, rank_state["python_rng"])
    return {**state, "round": rank_state["round"]}


def _load_reference(reference, folder: Path, own: Path, sharded: bool) -> None:
    path = own / REFERENCE_SHARD_FILE if sharded else folder / REFERENCE_FOLDER
    if not path.exists():
        raise ValueError(f"resume_from_checkpoint: {folder} holds no reference model ({path.name}): it was written "
                         f"without sync_ref_model, whose reference changes during training; resume it with "
                         f"sync_ref_model: false")
    if sharded:
        load_local_tensors(reference, load_file(str(path)), str(path))
    else:
        load_weights(reference, path)


def load_whole_weights(folder: Path, model) -> None:
    """Load a checkpoint's weights into ``model``, built like the run's but unsharded (``fusedrl export``):
    the Hugging Face files, or under fsdp the ranks' shards joined (``_joined_shards``)."""
    state = json.loads((folder / "trainer_state.json").read_text())
    if state.get("fsdp", False):
        model.load_state_dict(_joined_shards(folder, model, state.get("world_size", 1)))
    else:
        load_weights(model, folder)


def _joined_shards(folder: Path, model, world: int) -> dict[str, torch.Tensor]:
    """The whole state dict of ``model`` from a sharded checkpoint of ``world`` ranks: each tensor is its
    ranks' ``model_shard.safetensors`` pieces joined along dim 0 in rank order (FSDP shards dim 0), or rank
    0's copy when the pieces are whole already (buffers every rank holds)."""
    pieces = [load_file(str(_rank_folder(folder, Ranks(rank=r, world_size=world)) / MODEL_SHARD_FILE))
              for r in range(world)]
    whole = {}
    for name, target in model.state_dict().items():
        parts = [piece[name] for piece in pieces]
        split = target.dim() > 0 and sum(part.shape[0] for part in parts) == target.shape[0]
        whole[name] = torch.cat(parts) if split else parts[0]
    return whole


def load_round_tensors(folder: Path, ranks: Ranks | None = None) -> dict[str, torch.Tensor]:
    """The tensors of this rank's pending updates saved in ``folder`` (empty at a round boundary)."""
    path = _rank_folder(folder, ranks or Ranks()) / ROUND_FILE
    return load_file(str(path)) if path.is_file() else {}
