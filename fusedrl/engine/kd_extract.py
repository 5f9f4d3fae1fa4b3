"""``fusedrl kd-extract``: a teacher's top-k next-token logprobs, streamed from its hidden states.

The teacher runs over each row's prompt + completion tokens (the same formats and
chat templates as training); ``linear_topk`` turns its final hidden states into
the top-k ids and logprobs over the full vocabulary without materialising logits.

Output: ``shard-00000.parquet``, ... with the columns the KD trainer reads
(``input_ids``, ``completion_mask``, ``target_token_ids``, ``target_logprobs``) and
``kd_metadata.yaml`` (teacher, k, temperature, tokenizer and its vocab hash).
Alignment, stated once: ``target_token_ids[i]`` is the teacher's distribution of
token ``i`` given tokens ``< i`` (the teacher's output at position ``i - 1``); it is
empty at position 0 and on prompt tokens. The batch builder shifts it like the labels.
Shards are written atomically and skipped when present, so an interrupted run resumes.
Under ``torchrun`` each rank (one GPU each) writes shards ``rank, rank + world_size, ...``.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import torch
import yaml

from ..kernels import linear_topk
from .data import DataConfig, prepare_dataset
from .data.collate import pad
from .distributed import init_ranks
from .logit_head import final_hidden, logit_head
from .models import DTYPES, load_causal_lm, load_tokenizer

log = logging.getLogger(__name__)

METADATA_FILE = "kd_metadata.yaml"
# The flags with a fixed set of values (argparse lists them on a bad one).
CHOICES = {"dtype": list(DTYPES), "on_bad_row": ["error", "skip"]}


@dataclass
class ExtractConfig:
    """Arguments of ``fusedrl kd-extract`` (see ``add_arguments``)."""

    teacher: str
    dataset: str
    output: str
    top_k: int = 64
    temperature: float = 1.0
    max_length: int = 1024
    max_prompt_length: int | None = None
    batch_size: int = 8
    shard_size: int = 1024
    chat_template: str | None = None
    on_bad_row: str = "error"
    dtype: str = "float32"
    trust_remote_code: bool = False
    backend: str = "auto"


def vocab_fingerprint(tokenizer) -> str:
    """Hash of the token -> id map and the special ids: equal exactly when ids mean the same tokens."""
    parts = (sorted(tokenizer.get_vocab().items()), tokenizer.bos_token_id, tokenizer.eos_token_id)
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _metadata(cfg: ExtractConfig, tokenizer, rows: int) -> dict:
    return {"teacher": cfg.teacher, "top_k": cfg.top_k, "temperature": cfg.temperature,
            "tokenizer": tokenizer.name_or_path, "vocab_fingerprint": vocab_fingerprint(tokenizer),
            "vocab_size": len(tokenizer), "rows": rows, "max_length": cfg.max_length,
            "alignment": "target_token_ids[i] is the teacher distribution of token i given tokens < i"}


def _check_or_write_metadata(out: Path, meta: dict) -> None:
    path = out / METADATA_FILE
    if path.is_file():
        old = yaml.safe_load(path.read_text())
        changed = [k for k in ("teacher", "top_k", "temperature", "vocab_fingerprint", "rows") if old.get(k) != meta[k]]
        if changed:
            raise ValueError(f"{out}: holds an extraction with different {changed} "
                             f"({ {k: old.get(k) for k in changed} }); use a new --output folder")
        return
    path.write_text(yaml.safe_dump(meta, sort_keys=False))


def read_metadata(folder: str | Path) -> dict | None:
    """The ``kd_metadata.yaml`` of an extraction folder, or None when ``folder`` is not one."""
    path = Path(folder) / METADATA_FILE
    return yaml.safe_load(path.read_text()) if path.is_file() else None


@torch.no_grad()
def teacher_topk(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor, k: int,
                 temperature: float, backend: str = "auto",
                 position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``model``'s top-``k`` next-token ``(logprobs, ids)``, each ``[B, T, k]``, of ``input_ids [B, T]`` at
    ``temperature`` (its logit transform applied): position t holds the distribution of token t + 1. Only the
    ``positions [B, T]`` (bool) reach the lm_head; the others hold logprob -inf and id -1. The logits are never
    materialised (``linear_topk``)."""
    head = logit_head(model)
    hidden = head.inputs(final_hidden(model, input_ids, attention_mask, position_ids))
    logprobs = torch.full((*positions.shape, k), float("-inf"), device=hidden.device)
    ids = torch.full((*positions.shape, k), -1, dtype=torch.int64, device=hidden.device)
    logprobs[positions], ids[positions] = linear_topk(hidden[positions], head.weight, k, bias=head.bias,
                                                      temperature=temperature, softcap=head.softcap, backend=backend)
    return logprobs, ids


def _teacher_rows(model, rows: list[dict], cfg: ExtractConfig, pad_id: int, device) -> list[dict]:
    """Rows with ``target_token_ids`` / ``target_logprobs`` lists (empty where no completion token)."""
    ids = [torch.tensor(r["input_ids"], dtype=torch.long) for r in rows]
    input_ids = pad(ids, pad_id).to(device)
    attention = pad([torch.ones_like(i) for i in ids], 0).to(device)
    next_is_completion = [torch.tensor(list(r["completion_mask"][1:]) + [0], dtype=torch.bool) for r in rows]
    logprobs, top_ids = teacher_topk(model, input_ids, attention, pad(next_is_completion, False).to(device),
                                     cfg.top_k, cfg.temperature, cfg.backend)
    out = []
    for b, row in enumerate(rows):
        n = len(row["input_ids"])
        lp, ti = logprobs[b, : n - 1].tolist(), top_ids[b, : n - 1].tolist()
        mask = row["completion_mask"]
        targets = [[]] + [ti[i - 1] if mask[i] else [] for i in range(1, n)]
        values = [[]] + [lp[i - 1] if mask[i] else [] for i in range(1, n)]
        out.append({"input_ids": row["input_ids"], "completion_mask": mask,
                    "target_token_ids": targets, "target_logprobs": values})
    return out


def extract(cfg: ExtractConfig, progress: bool = True) -> Path:
    """Run the extraction (resuming past finished shards); return the output folder."""
    from tqdm.auto import tqdm

    if cfg.top_k < 1:
        raise ValueError(f"--top-k: expected >= 1, got {cfg.top_k}")
    if not cfg.temperature > 0:
        raise ValueError(f"--temperature: expected > 0, got {cfg.temperature}")
    ranks = init_ranks()
    device = ranks.device
    tokenizer = load_tokenizer(cfg.teacher, trust_remote_code=cfg.trust_remote_code, key="teacher")
    data_config = DataConfig(max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                             chat_template=cfg.chat_template, on_bad_row=cfg.on_bad_row)
    out = Path(cfg.output)
    with ranks.main_first():  # rank 0 tokenises (the others read its cache) and writes the metadata
        rows = prepare_dataset([{"path": cfg.dataset}], tokenizer, "sft", data_config)
        out.mkdir(parents=True, exist_ok=True)
        _check_or_write_metadata(out, _metadata(cfg, tokenizer, len(rows)))
    model = load_causal_lm(cfg.teacher, cfg.dtype, trust_remote_code=cfg.trust_remote_code, key="teacher")
    model = model.to(device).eval()
    shards = math.ceil(len(rows) / cfg.shard_size)
    mine = range(ranks.rank, shards, ranks.world_size)
    for shard in tqdm(mine, desc="kd-extract shards", disable=not (progress and ranks.is_main)):
        path = out / f"shard-{shard:05d}.parquet"
        if path.is_file():
            continue
        start, stop = shard * cfg.shard_size, min(len(rows), (shard + 1) * cfg.shard_size)
        records = []
        for first in range(start, stop, cfg.batch_size):
            batch = [rows[i] for i in range(first, min(stop, first + cfg.batch_size))]
            records += _teacher_rows(model, batch, cfg, tokenizer.pad_token_id, device)
        tmp = path.with_name(path.name + ".tmp")
        datasets.Dataset.from_list(records).to_parquet(str(tmp))
        os.replace(tmp, path)
    ranks.barrier()
    ranks.close()
    if ranks.is_main:
        log.info("wrote %d rows in %d shards to %s", len(rows), shards, out)
    return out


def add_arguments(parser) -> None:
    """The ``kd-extract`` command-line flags (names mirror ``ExtractConfig``)."""
    defaults = ExtractConfig("", "", "")
    parser.add_argument("--teacher", required=True, help="teacher model folder or hub id")
    parser.add_argument("--dataset", required=True, help="data file / folder / hub id (any training format)")
    parser.add_argument("--output", required=True, help="folder for the Parquet shards and kd_metadata.yaml")
    for name in ("top_k", "temperature", "max_length", "max_prompt_length", "batch_size", "shard_size",
                 "chat_template", "on_bad_row", "dtype", "backend"):
        default = getattr(defaults, name)
        kind = type(default) if default is not None else (int if name == "max_prompt_length" else str)
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=default, choices=CHOICES.get(name))
    parser.add_argument("--trust-remote-code", action="store_true")


def config_from_args(args) -> ExtractConfig:
    """``ExtractConfig`` from parsed ``kd-extract`` arguments."""
    names = asdict(ExtractConfig("", "", "")).keys()
    return ExtractConfig(**{n: getattr(args, n) for n in names})
