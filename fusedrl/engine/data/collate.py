"""Batches of tensors for each algorithm, and the one place the causal shift happens.

Shift (every training batch): ``labels[b, t]`` is the id of token ``t + 1`` when
that token is a completion token, else ``-100``; the last position of every
sequence is ``-100``. So the model's hidden state at position ``t`` is scored
against ``labels[b, t]`` as is; the kernels never shift.

KD alignment: row entry ``target_token_ids[i]`` is the teacher's distribution of
token ``i`` given tokens ``< i`` (teacher.py). The batch shifts it like the
labels: ``target_token_ids[b, t, :]`` / ``target_logprobs[b, t, :]`` describe
token ``t + 1``, i.e. the student's next-token distribution at position ``t``,
and ``target_mask[b, t]`` is true exactly where ``labels[b, t] != -100`` and the
teacher has data for token ``t + 1``. Masked entries hold id 0 and logprob 0.

Stepwise batches (process reward modelling) are the exception: a step's label sits at its own last
token, unshifted, because the hidden state there scores the step (a token classification).

Training batches are right padded (``input_ids`` with the pad id, ``labels``
with -100, ``attention_mask`` 0); generation prompts are left padded.
"""
from __future__ import annotations

import json
from functools import partial
from typing import Callable

import torch

from .spec import DataConfig, data_kind

IGNORE_INDEX = -100
_PAD = {"input_ids": None, "labels": IGNORE_INDEX, "position_ids": 0, "attention_mask": 0,
        "target_token_ids": 0, "target_logprobs": 0.0, "target_mask": False}


def shift_labels(input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """``labels[n]`` of one sequence: ``labels[t] = input_ids[t+1]`` where token t+1 is a completion token, else -100."""
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:-1] = torch.where(completion_mask[1:].bool(), input_ids[1:], IGNORE_INDEX)
    return labels


def pad(seqs: list[torch.Tensor], value, side: str = "right") -> torch.Tensor:
    """Stack ``[n_i, ...]`` tensors into ``[B, max n_i, ...]``, filling with ``value`` on ``side``."""
    longest = max(len(s) for s in seqs)
    out = seqs[0].new_full((len(seqs), longest, *seqs[0].shape[1:]), value)
    for b, s in enumerate(seqs):
        if side == "left":
            out[b, longest - len(s):] = s
        else:
            out[b, : len(s)] = s
    return out


def _sequence(ids, mask) -> dict[str, torch.Tensor]:
    input_ids = torch.as_tensor(ids, dtype=torch.long)
    return {"input_ids": input_ids, "labels": shift_labels(input_ids, torch.as_tensor(mask)),
            "attention_mask": torch.ones_like(input_ids)}


def _teacher(row: dict, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Shifted ``[n, K]`` teacher ids / logprobs and the ``[n]`` target mask of one KD row."""
    later = list(zip(row["target_token_ids"][1:], row["target_logprobs"][1:]))  # entry t + 1 -> position t
    present = torch.tensor([bool(p) for p, _ in later] + [False])
    k = next(len(p) for p, _ in later if p)
    ids, logprobs = torch.zeros(len(labels), k, dtype=torch.long), torch.zeros(len(labels), k, dtype=torch.float32)
    ids[present] = torch.tensor([p for p, _ in later if p], dtype=torch.long)
    logprobs[present] = torch.tensor([lp for p, lp in later if p], dtype=torch.float32)
    mask = present & (labels != IGNORE_INDEX)
    ids[~mask], logprobs[~mask] = 0, 0.0
    return {"target_token_ids": ids, "target_logprobs": logprobs, "target_mask": mask}


def _pack(seqs: list[dict[str, torch.Tensor]], max_length: int) -> list[dict[str, torch.Tensor]]:
    """Concatenate sequences in order into rows of at most ``max_length`` tokens, position ids restarting per sequence."""
    rows, current, used = [], [], 0
    for s in seqs:
        if current and used + len(s["input_ids"]) > max_length:
            rows.append(current)
            current, used = [], 0
        current.append({**s, "position_ids": torch.arange(len(s["input_ids"]))})
        used += len(s["input_ids"])
    rows.append(current)
    return [{key: torch.cat([s[key] for s in row]) for key in row[0]} for row in rows]


def _stack(seqs: list[dict[str, torch.Tensor]], pad_token_id: int, side: str = "right") -> dict[str, torch.Tensor]:
    return {key: pad([s[key] for s in seqs], pad_token_id if _PAD[key] is None else _PAD[key], side) for key in seqs[0]}


def collate_sft(rows: list[dict], pad_token_id: int, packing: bool = False, max_length: int | None = None,
                teacher: bool = False) -> dict[str, torch.Tensor]:
    """SFT batch: ``input_ids``, ``attention_mask``, ``labels`` ``[B, T]`` (shifted, -100 on prompt and pad).

    ``teacher`` (KD) adds ``target_token_ids`` ``[B, T, K]`` int64, ``target_logprobs``
    ``[B, T, K]`` fp32 and ``target_mask`` ``[B, T]`` bool (module docstring).
    ``packing`` concatenates sequences into rows of at most ``max_length`` tokens
    (``[R, T]``, R <= B) and adds ``position_ids`` restarting at 0 for each
    sequence; each sequence's last token keeps label -100, so nothing is learnt
    across a boundary. The model must then attend within sequences only (e.g.
    flash-attention varlen from ``position_ids``).
    """
    seqs = []
    for row in rows:
        s = _sequence(row["input_ids"], row["completion_mask"])
        seqs.append({**s, **_teacher(row, s["labels"])} if teacher else s)
    if teacher and len({s["target_token_ids"].shape[1] for s in seqs}) > 1:
        raise ValueError("target_token_ids: rows carry different numbers of teacher ids per position; set kd_top_k")
    if packing:
        seqs = _pack(seqs, max_length or max(len(s["input_ids"]) for s in seqs))
    return _stack(seqs, pad_token_id)


def collate_pairwise(rows: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pairs stacked on the batch: ``input_ids``, ``attention_mask``, ``labels`` ``[2B, T]``;
    rows ``0..B-1`` chosen, ``B..2B-1`` rejected; ``margin`` ``[B]`` fp32 when the data has one."""
    seqs = [_sequence(row[f"{side}_input_ids"], row[f"{side}_completion_mask"])
            for side in ("chosen", "rejected") for row in rows]
    batch = _stack(seqs, pad_token_id)
    if "margin" in rows[0]:
        batch["margin"] = torch.tensor([row["margin"] for row in rows], dtype=torch.float32)
    return batch


def collate_kto(rows: list[dict], pad_token_id: int, max_length: int | None = None, kl_pairs: bool = True
                ) -> dict[str, torch.Tensor]:
    """Unpaired batch: ``input_ids``, ``attention_mask``, ``labels`` ``[B, T]``, ``kto_label`` ``[B]`` bool,
    and with ``kl_pairs`` the KL pairs ``kl_input_ids``, ``kl_attention_mask``, ``kl_labels`` ``[B, T']``:
    prompt ``i`` with completion ``(i + 1) % B``, its tail cut to ``max_length`` (then ``B >= 2``)."""
    batch = _stack([_sequence(row["input_ids"], row["completion_mask"]) for row in rows], pad_token_id)
    batch["kto_label"] = torch.tensor([bool(row["label"]) for row in rows], dtype=torch.bool)
    if not kl_pairs:
        return batch
    if len(rows) < 2:
        raise ValueError(f"kto batches need >= 2 rows for the KL pairs, got {len(rows)}; drop the last partial batch")
    splits = []
    for row in rows:
        cut = list(row["completion_mask"]).index(1)
        splits.append((row["input_ids"][:cut], row["input_ids"][cut:], row["completion_mask"][cut:]))
    mismatched = []
    for i, (prompt, _, _) in enumerate(splits):
        _, completion, mask = splits[(i + 1) % len(splits)]
        ids, full_mask = list(prompt) + list(completion), [0] * len(prompt) + list(mask)
        mismatched.append(_sequence(ids[:max_length], full_mask[:max_length]))
    batch.update({f"kl_{key}": value for key, value in _stack(mismatched, pad_token_id).items()})
    return batch


def collate_stepwise(rows: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Stepwise batch: ``input_ids``, ``attention_mask``, ``labels`` ``[B, T]`` (unshifted: 1 or 0 at the last token
    of each correct or wrong step, -100 elsewhere) and ``last_step`` ``[B]`` int64, the position of the reply's
    final step (-1 where truncation cut it off)."""
    seqs = [{"input_ids": torch.as_tensor(row["input_ids"], dtype=torch.long),
             "labels": torch.as_tensor(row["step_labels"], dtype=torch.long),
             "attention_mask": torch.ones(len(row["input_ids"]), dtype=torch.long)} for row in rows]
    batch = _stack(seqs, pad_token_id)
    labelled = [(s["labels"] != IGNORE_INDEX).nonzero()[-1, 0] for s in seqs]
    batch["last_step"] = torch.tensor([int(last) if row["last_step_kept"] else -1
                                       for row, last in zip(rows, labelled)], dtype=torch.long)
    return batch


def collate_prompts(rows: list[dict], pad_token_id: int) -> dict:
    """Generation batch: ``prompt_input_ids`` / ``prompt_attention_mask`` ``[B, T]`` LEFT padded,
    ``prompts`` (text or message lists as given) and every other column as a python list."""
    ids = [torch.as_tensor(row["prompt_ids"], dtype=torch.long) for row in rows]
    batch = {
        "prompt_input_ids": pad(ids, pad_token_id, side="left"),
        "prompt_attention_mask": pad([torch.ones_like(i) for i in ids], 0, side="left"),
        "prompts": [json.loads(row["prompt_json"]) for row in rows],
    }
    batch.update({key: [row[key] for row in rows] for key in rows[0] if key not in ("prompt_ids", "prompt_json")})
    return batch


def make_collator(algorithm: str, pad_token_id: int, config: DataConfig | None = None) -> Callable[[list[dict]], dict]:
    """The collate function (picklable, for ``DataLoader(collate_fn=...)``) of ``algorithm``'s kind.

    It takes a list of rows of ``prepare_dataset``'s result in the default
    (python lists) format and returns the batch dict described at each ``collate_*``.
    """
    config = config or DataConfig()
    kind = data_kind(algorithm)
    if config.packing and kind not in ("sft", "kd"):
        raise ValueError(f"packing: only sft and kd batches can be packed, not {algorithm}")
    if kind in ("sft", "kd"):
        return partial(collate_sft, pad_token_id=pad_token_id, packing=config.packing, max_length=config.max_length,
                       teacher=kind == "kd")
    if kind == "pairwise":
        return partial(collate_pairwise, pad_token_id=pad_token_id)
    if kind == "kto":
        return partial(collate_kto, pad_token_id=pad_token_id, max_length=config.max_length,
                       kl_pairs=config.kl_pairs)
    if kind == "stepwise":
        return partial(collate_stepwise, pad_token_id=pad_token_id)
    return partial(collate_prompts, pad_token_id=pad_token_id)


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, or its EOS id when it has no pad token."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("tokenizer: expected a pad or eos token to pad batches with")
    return pad_id
