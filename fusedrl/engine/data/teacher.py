"""Top-k teacher targets of a KD row, checked and cut to the kept window.

Row layout (like vLLM's ``prompt_logprobs``): for a sequence of ``n`` tokens,
``target_token_ids[i]`` and ``target_logprobs[i]`` are lists of K ids and their
teacher logprobs for token ``i`` given tokens ``< i``; entry 0 (and any position
without teacher data) is empty or null. An optional ``target_mask[i]`` (bool)
switches positions off. The ids index the student's tokenisation of the same
row, so there is exactly one entry per token. Stored unshifted; collate.py
shifts them next to the labels.
"""
from __future__ import annotations

from . import validation as v
from .validation import KD_TARGETS, BadRow

_PER_TOKEN = "one list per token"


def _per_token(row: dict, field: str, n: int, optional: bool = False) -> list | None:
    values = v.get(row, field, list, f"{_PER_TOKEN} ({n} entries)", optional=optional)
    if values is not None and len(values) != n:
        raise BadRow(KD_TARGETS, field, f"{_PER_TOKEN} of the tokenised row ({n} entries)", f"{len(values)} entries")
    return values


def _position(ids, logprobs, i: int, top_k: int | None) -> tuple[list[int], list[float]]:
    if not ids:
        return [], []
    if (not isinstance(ids, list) or not isinstance(logprobs, list) or len(ids) != len(logprobs)
            or not all(isinstance(t, int) and t >= 0 for t in ids)
            or not all(isinstance(lp, (int, float)) and not isinstance(lp, bool) for lp in logprobs)):
        raise BadRow(KD_TARGETS, "target_token_ids", f"at position {i}: K ids >= 0 and K logprobs", (ids, logprobs))
    if top_k is None:
        return ids, [float(lp) for lp in logprobs]
    if len(ids) < top_k:
        raise BadRow(KD_TARGETS, "target_token_ids", f"at position {i}: at least kd_top_k={top_k} ids", ids)
    best = sorted(range(len(ids)), key=lambda k: -logprobs[k])[:top_k]
    return [ids[k] for k in best], [float(logprobs[k]) for k in best]


def teacher_window(row: dict, n: int, mask: list[int], start: int, end: int, top_k: int | None) -> dict:
    """``target_token_ids`` / ``target_logprobs`` for positions ``start..end-1`` (lists of K, or empty).

    ``n`` is the untruncated token count and ``mask`` its completion mask. Every
    non-empty position must have the same K (``top_k`` cuts each to its k most
    likely ids first), and at least one completion token after ``start`` must
    have teacher data.
    """
    ids = _per_token(row, "target_token_ids", n)
    logprobs = _per_token(row, "target_logprobs", n)
    keep = _per_token(row, "target_mask", n, optional=True)
    out_ids, out_lps = [], []
    for i in range(start, end):
        on = keep is None or bool(keep[i])
        pos_ids, pos_lps = _position(ids[i], logprobs[i], i, top_k) if on else ([], [])
        out_ids.append(pos_ids)
        out_lps.append(pos_lps)
    sizes = {len(p) for p in out_ids if p}
    if len(sizes) > 1:
        raise BadRow(KD_TARGETS, "target_token_ids", "the same number of ids at every position (or set kd_top_k)",
                     sorted(sizes))
    if not any(out_ids[i - start] and mask[i] for i in range(start + 1, end)):
        raise BadRow(KD_TARGETS, "target_token_ids", "teacher data on at least one kept completion token")
    return {"target_token_ids": out_ids, "target_logprobs": out_lps}
