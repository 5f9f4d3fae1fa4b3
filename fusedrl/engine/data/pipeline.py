"""Rows to tokenised datasets, once per dataset, through a cached ``datasets.map``.

Columns of the result (all token lists unshifted; collate.py shifts):

- ``sft``: ``input_ids``, ``completion_mask``
- ``kd``: those plus ``target_token_ids`` / ``target_logprobs`` (teacher.py)
- ``pairwise``: ``chosen_input_ids``, ``chosen_completion_mask``, ``rejected_input_ids``,
  ``rejected_completion_mask`` and ``margin`` when the data has one
- ``kto``: ``input_ids``, ``completion_mask``, ``label``; a pair becomes two
  rows (chosen: True, rejected: False)
- ``prompt``: ``prompt_ids`` (the last ``max_prompt_length`` tokens),
  ``prompt_json`` (the prompt as given, text or messages, JSON-encoded) and every
  column the format does not read (``solution``, ...) unchanged
- ``stepwise``: ``input_ids``, ``step_labels`` (per token: -100, or at the last token of each step
  (its separator's) 1 for a correct step and 0 for a wrong one) and ``last_step_kept`` (truncation left
  the reply's final step)

The map's fingerprint, and so its cache file, is a hash of the input dataset's
fingerprint, the tokenizer (name and full definition), the template choice, the
format, the kind, the lengths and the bad-row policy (so a cache written while
skipping never hides a bad row from ``on_bad_row="error"``).
"""
from __future__ import annotations

import hashlib
import json
import logging

import datasets

from .collate import IGNORE_INDEX
from .formats import Format, detect_format, get_format
from .loading import Provenance, load_rows
from .spec import DataConfig, DatasetSpec, data_kind
from .teacher import teacher_window
from .tokenize import Encoder, tokenizer_fingerprint, truncate
from .validation import MISSING, STEP_CUT, TOO_LONG, BadRow, drop_bad_rows, row_error

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when the meaning of the tokenised columns changes

_IDS = datasets.Sequence(datasets.Value("int32"))
_MASK = datasets.Sequence(datasets.Value("int8"))
_SEQUENCE = {"input_ids": _IDS, "completion_mask": _MASK}
COLUMNS = {
    "sft": _SEQUENCE,
    "kd": {
        **_SEQUENCE,
        "target_token_ids": datasets.Sequence(_IDS),
        "target_logprobs": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
    },
    "pairwise": {f"{side}_{name}": feature for side in ("chosen", "rejected") for name, feature in _SEQUENCE.items()},
    "kto": {**_SEQUENCE, "label": datasets.Value("bool")},
    "prompt": {"prompt_ids": _IDS, "prompt_json": datasets.Value("string")},
    "stepwise": {"input_ids": _IDS, "step_labels": _MASK, "last_step_kept": datasets.Value("bool")},
}
# ``_cut``: the record lost tokens to truncation (counted in the log, then removed like the other two).
_BOOKKEEPING = {"_bad": datasets.Value("string"), "_row": datasets.Value("int64"), "_cut": datasets.Value("bool")}
_NEEDS = {
    "completion": "a completion to train on (an assistant reply, or completion text)",
    "chosen": "a chosen reply (pairwise training needs chosen and rejected)",
    "rejected": "a rejected reply (pairwise training needs chosen and rejected)",
    "label": "a label, or chosen and rejected replies to derive labels from",
    "prompt": "a non-empty prompt to generate from",
    "steps": "the reply's steps and their labels (completions and labels)",
}


def _need(example: dict, key: str):
    value = example.get(key)
    if value is None or (not isinstance(value, bool) and not value):
        raise BadRow(MISSING, key, _NEEDS[key])
    return value


class _Tokenise:
    """The batched map function: one input row gives zero, one or two records."""

    def __init__(self, kind: str, fmt: Format, encoder: Encoder, config: DataConfig, provenance: Provenance, blank: dict):
        self.kind, self.fmt, self.encoder, self.config = kind, fmt, encoder, config
        self.provenance, self.blank = provenance, blank

    def __call__(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        out: dict[str, list] = {name: [] for name in self.blank}
        for j, index in enumerate(indices):
            row = {name: values[j] for name, values in batch.items()}
            try:
                records = self.records(self.fmt.convert(row), row)
            except BadRow as bad:
                if self.config.on_bad_row == "error":
                    raise row_error(*self.provenance.locate(index), bad) from None
                records = [{**self.blank, "_bad": bad.key}]
            for record in records:
                record.setdefault("_bad", "")
                record.setdefault("_cut", False)
                record["_row"] = index
                for name in out:
                    out[name].append(record[name])
        return out

    def _window(self, ids: list[int], mask: list[int]) -> tuple[list[int], list[int], int, int]:
        """The kept window ``ids[start:end]``, ``mask[start:end]`` and its bounds (``tokenize.truncate``)."""
        start, end = truncate(mask, self.config.max_length, self.config.max_prompt_length)
        return ids[start:end], mask[start:end], start, end

    def records(self, example: dict, row: dict) -> list[dict]:
        """The output records of one canonical example (see the module docstring)."""
        if self.kind in ("sft", "kd"):
            tokens = example.get("tokens") or self.encoder.sequence(example.get("prompt"), _need(example, "completion"))
            ids, mask, start, end = self._window(*tokens)
            record = {"input_ids": ids, "completion_mask": mask, "_cut": end - start < len(tokens[0])}
            if self.kind == "kd":
                record.update(teacher_window(row, len(tokens[0]), tokens[1], start, end, self.config.kd_top_k))
            return [record]
        if self.kind == "pairwise":
            record = {"_cut": False}
            for side in ("chosen", "rejected"):
                full, full_mask = self.encoder.sequence(example.get("prompt"), _need(example, side))
                ids, mask, _, _ = self._window(full, full_mask)
                record.update({f"{side}_input_ids": ids, f"{side}_completion_mask": mask})
                record["_cut"] |= len(ids) < len(full)
            if "margin" in self.blank:
                record["margin"] = example["margin"]
            return [record]
        if self.kind == "kto":
            if "completion" in example:
                pairs = [(_need(example, "completion"), _need(example, "label"))]
            else:
                pairs = [(_need(example, "chosen"), True), (_need(example, "rejected"), False)]
            records = []
            for completion, label in pairs:
                full, full_mask = self.encoder.sequence(example.get("prompt"), completion)
                ids, mask, _, _ = self._window(full, full_mask)
                records.append({"input_ids": ids, "completion_mask": mask, "label": label,
                                "_cut": len(ids) < len(full)})
            return records
        if self.kind == "stepwise":
            return [self._stepwise_record(example)]
        return [self._prompt_record(example)]

    def _stepwise_record(self, example: dict) -> dict:
        full, full_mask, ends = self.encoder.steps(example.get("prompt"), _need(example, "steps"),
                                                   self.config.step_separator)
        ids, _, start, end = self._window(full, full_mask)
        if ends[0] >= end:
            raise BadRow(STEP_CUT, "completions", f"a first step that ends within max_length="
                         f"{self.config.max_length} tokens", f"it ends at token {ends[0] - start + 1}")
        labels = [IGNORE_INDEX] * len(ids)
        for position, correct in zip(ends, example["step_labels"]):
            if position < end:
                labels[position - start] = int(correct)
        return {"input_ids": ids, "step_labels": labels, "last_step_kept": ends[-1] < end,
                "_cut": end - start < len(full)}

    def _prompt_record(self, example: dict) -> dict:
        prompt = _need(example, "prompt")
        if isinstance(prompt, list) and example.get("completion"):
            turns = prompt + example["completion"]
            prompt = turns[:-1] if turns[-1]["role"] == "assistant" else turns
        ids = self.encoder.prompt(prompt)
        cut = bool(self.config.max_prompt_length) and len(ids) > self.config.max_prompt_length
        if cut:
            ids = ids[-self.config.max_prompt_length :]
        if len(ids) >= self.config.max_length:
            raise BadRow(TOO_LONG, "prompt", f"a prompt shorter than max_length={self.config.max_length} tokens",
                         f"{len(ids)} tokens")
        return {"prompt_ids": ids, "prompt_json": json.dumps(prompt), "_cut": cut}


def _blank(features: datasets.Features) -> dict:
    defaults = {"bool": False, "string": "", "float32": 0.0, "int64": -1}
    return {name: [] if isinstance(f, datasets.Sequence) else defaults[f.dtype] for name, f in features.items()}


def tokenize_dataset(
    ds: datasets.Dataset,
    tokenizer,
    algorithm: str,
    config: DataConfig | None = None,
    *,
    format: str | None = None,
    provenance: Provenance | None = None,
) -> datasets.Dataset:
    """Tokenise raw rows for ``algorithm`` (or a kind); columns as in the module docstring.

    ``format`` is a ``formats.FORMATS`` name (detected from the columns when
    ``None``); ``provenance`` names rows in errors (default: the whole dataset is
    one source called ``<in-memory dataset>``). Bad rows raise or are dropped per
    ``config.on_bad_row``; a dataset left empty raises ``ValueError``.
    """
    config = config or DataConfig()
    kind = data_kind(algorithm)
    provenance = provenance or Provenance(("<in-memory dataset>",), (0,))
    source = provenance.name
    if len(ds) == 0:
        raise ValueError(f"{source}: no usable rows to train on (it has no rows)")
    name = format or detect_format(ds.column_names, source)
    fmt = get_format(name, source)
    columns = dict(COLUMNS[kind])
    if kind == "pairwise" and "margin" in ds.column_names and "margin" in fmt.fields:
        columns["margin"] = datasets.Value("float32")
    keep = [c for c in ds.column_names if c not in fmt.fields] if kind == "prompt" else []
    blank = _blank(datasets.Features({**columns, **_BOOKKEEPING}))
    features = datasets.Features({**{c: ds.features[c] for c in keep}, **columns, **_BOOKKEEPING})
    template = config.chat_template or fmt.template
    encoder = Encoder(tokenizer, template)
    parts = (ds._fingerprint, CACHE_VERSION, kind, name, template, tokenizer.chat_template, tokenizer_fingerprint(tokenizer),
             config.max_length, config.max_prompt_length, config.kd_top_k, config.on_bad_row, keep,
             config.step_separator if kind == "stepwise" else None)
    fingerprint = hashlib.sha256(repr(parts).encode()).hexdigest()[:32]
    out = ds.map(
        _Tokenise(kind, fmt, encoder, config, provenance, blank),
        batched=True,
        with_indices=True,
        remove_columns=[c for c in ds.column_names if c not in keep],
        features=features,
        num_proc=config.num_proc,
        new_fingerprint=fingerprint,
        desc=f"Tokenising {source} for {kind}",
    )
    out = drop_bad_rows(out, provenance, fingerprint)
    _log_truncated(out, source, config)
    return out.remove_columns("_cut")


def _log_truncated(ds: datasets.Dataset, source: str, config: DataConfig) -> None:
    """One log line counting the records that lost tokens to ``max_length`` / ``max_prompt_length``."""
    cut = sum(ds.with_format("arrow")["_cut"].to_pylist())
    if cut:
        prompt = f", max_prompt_length={config.max_prompt_length}" if config.max_prompt_length else ""
        log.info("truncated %d of %d records of %s to max_length=%d%s", cut, len(ds), source, config.max_length,
                 prompt)


def prepare_dataset(
    specs: DatasetSpec | dict | list, tokenizer, algorithm: str, config: DataConfig | None = None
) -> datasets.Dataset:
    """Load, tokenise and concatenate the datasets of a config's ``datasets:`` list for ``algorithm``.

    Returns one ``datasets.Dataset`` with the columns of the algorithm's kind
    (module docstring); feed its rows to ``collate.make_collator(algorithm, ...)``.
    """
    config = config or DataConfig()
    specs = specs if isinstance(specs, list) else [specs]
    parts = []
    for spec in specs:
        spec = spec if isinstance(spec, DatasetSpec) else DatasetSpec.from_dict(spec)
        ds, provenance = load_rows(spec, config.cache_dir)
        parts.append(tokenize_dataset(ds, tokenizer, algorithm, config, format=spec.type, provenance=provenance))
    if len({tuple(sorted(p.column_names)) for p in parts}) > 1:
        raise ValueError(f"datasets for {algorithm} have different columns: {[sorted(p.column_names) for p in parts]}")
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
