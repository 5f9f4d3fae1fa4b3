"""Row checks and the bad-row policy.

Every check raises ``BadRow(reason, field, expected, got)``. The tokenising map
either turns it into a ``ValueError`` that names the source file (or dataset
path), the 0-based row index, the field and what was expected
(``on_bad_row="error"``), or marks the row so ``drop_bad_rows`` removes it and
logs one summary line per reason (``on_bad_row="skip"``). A dataset left with
no rows always fails.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import datasets

log = logging.getLogger(__name__)

MISSING = "missing field"
WRONG_TYPE = "wrong type"
EMPTY = "empty completion"
EMPTY_PROMPT = "empty prompt"
TOO_LONG = "prompt too long"
STEP_CUT = "first step cut off"
TEMPLATE = "chat template failed"
KD_TARGETS = "bad teacher targets"

# ShareGPT spelling of messages ({"from": "human", "value": ...}) and its role names.
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}


class BadRow(Exception):
    """One row cannot be used; ``reason`` is one of the module constants."""

    def __init__(self, reason: str, field: str, expected: str, got: Any = None):
        self.reason, self.field, self.expected, self.got = reason, field, expected, got
        super().__init__(self.describe())

    def describe(self) -> str:
        """``"field 'chosen': missing field (expected ...)"``-style text, without the location."""
        got = "" if self.got is None else f", got {_preview(self.got)}"
        return f"field {self.field!r}: {self.reason} (expected {self.expected}{got})"

    @property
    def key(self) -> str:
        """What skipped rows are grouped by in the summary log."""
        return f"{self.reason} {self.field!r}"


def _preview(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def row_error(source: str, row: int, bad: BadRow) -> ValueError:
    """The ``ValueError`` for ``on_bad_row="error"``: ``"<source>: row <i>: field ...: ..."``."""
    return ValueError(f"{source}: row {row}: {bad.describe()}; set on_bad_row: skip to drop such rows")


def get(row: dict, field: str, types: type | tuple[type, ...], expected: str, optional: bool = False) -> Any:
    """``row[field]`` checked against ``types``; missing (absent or None) raises unless ``optional``."""
    value = row.get(field)
    if value is None:
        if optional:
            return None
        raise BadRow(MISSING, field, expected)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise BadRow(WRONG_TYPE, field, expected, value)
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def text(value: Any, field: str, empty: str = EMPTY) -> str:
    """A non-blank string; blank raises ``BadRow(empty, ...)`` (a completion's reason by default)."""
    if not isinstance(value, str):
        raise BadRow(WRONG_TYPE, field, "a string", value)
    if not value.strip():
        raise BadRow(empty, field, "non-empty text", value)
    return value


def label(value: Any, field: str = "label") -> bool:
    """A KTO label: a bool, or 0/1."""
    if value is None:
        raise BadRow(MISSING, field, "true or false")
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise BadRow(WRONG_TYPE, field, "true or false", value)


def message(value: Any, field: str) -> dict[str, str]:
    """One chat message as ``{"role", "content"}`` (ShareGPT ``{"from", "value"}`` is accepted)."""
    if isinstance(value, dict) and "from" in value and "role" not in value:
        value = {"role": SHAREGPT_ROLES.get(value["from"], value["from"]), "content": value.get("value")}
    if not isinstance(value, dict) or not isinstance(value.get("role"), str) or not isinstance(value.get("content"), str):
        raise BadRow(WRONG_TYPE, field, "a message {'role': str, 'content': str}", value)
    return {"role": value["role"], "content": value["content"]}


def messages(value: Any, field: str) -> list[dict[str, str]]:
    """A non-empty list of messages; an empty assistant message is an empty completion."""
    if value is None:
        raise BadRow(MISSING, field, "a list of messages")
    if not isinstance(value, list) or not value:
        raise BadRow(WRONG_TYPE, field, "a non-empty list of messages", value)
    out = [message(m, field) for m in value]
    if any(m["role"] == "assistant" and not m["content"].strip() for m in out):
        raise BadRow(EMPTY, field, "non-empty assistant messages", value)
    return out


def drop_bad_rows(ds: datasets.Dataset, provenance, fingerprint: str) -> datasets.Dataset:
    """Remove rows marked in ``_bad`` (skip mode), log one line per reason, fail if nothing is left.

    ``ds`` carries ``_bad`` (reason key, ``""`` when fine) and ``_row`` (global
    source row); ``provenance`` (loading.Provenance) names the rows.
    """
    table = ds.with_format("arrow")
    reasons, rows = table["_bad"].to_pylist(), table["_row"].to_pylist()
    skipped: dict[str, list[int]] = defaultdict(list)
    for reason, row in zip(reasons, rows):
        if reason:
            skipped[reason].append(row)
    total = len(set(rows))
    for reason, bad in skipped.items():
        where = [provenance.locate(i) for i in bad[:5]]
        shown = ", ".join(f"{src}:{i}" if len(provenance.sources) > 1 else str(i) for src, i in where)
        log.warning("skipped %d of %d rows of %s: %s (rows %s%s)", len(bad), total, provenance.name, reason, shown,
                    ", ..." if len(bad) > 5 else "")
    if skipped:
        ds = ds.filter(lambda bad: not bad, input_columns="_bad", new_fingerprint=f"{fingerprint}-ok",
                       desc=f"Dropping bad rows of {provenance.name}")
    if len(ds) == 0:
        why = "; ".join(f"{reason} in {len(bad)} rows" for reason, bad in skipped.items())
        raise ValueError(f"{provenance.name}: no usable rows to train on ({why})")
    return ds.remove_columns(["_bad", "_row"])
