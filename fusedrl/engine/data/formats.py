"""Row formats of TRL, ms-swift and axolotl, each turned into one canonical example.

A canonical example is a dict with some of:

- ``prompt``: text (no chat template) or a list of messages ``{"role", "content"}``
- ``completion`` (SFT / KD / unpaired KTO) or ``chosen`` and ``rejected`` (pairs):
  text, or the list of messages that follow the prompt; every assistant
  message in it is trained on
- ``label`` (bool, KTO), ``margin`` (float, reward modelling)
- ``steps`` and ``step_labels`` (process reward modelling): the completion's steps (texts) and one bool each
- ``tokens``: ``(input_ids, completion_mask)`` of a pre-tokenised row

Text prompts and completions are used as they are (the tokenizer's BOS in
front, EOS after the completion); messages go through the chat template.
axolotl types always build messages; their family picks the template
(``chatml.*``: chatml; ``llama3.*``, ``chat_template.*`` and the bare names
``intel``, ``argilla``, ... : the configured one).
``detect_format`` picks a type from the columns when the spec names none.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from . import validation as v
from .validation import EMPTY, MISSING, WRONG_TYPE, BadRow

TEXT_OR_MESSAGES = "text or a list of messages"


@dataclass(frozen=True)
class Format:
    """A row adapter, the columns it reads (the rest are kept for reward functions) and its template."""

    convert: Callable[[dict], dict]
    fields: tuple[str, ...]
    template: str | None = None


def _assistant(content: str) -> list[dict]:
    return [{"role": "assistant", "content": content}]


def _text_or_list(value: Any, field: str) -> Any:
    if value is None:
        raise BadRow(MISSING, field, TEXT_OR_MESSAGES)
    if not isinstance(value, (str, list)):
        raise BadRow(WRONG_TYPE, field, TEXT_OR_MESSAGES, value)
    return value


def _prompt(value: Any, field: str) -> str | list[dict]:
    """A prompt: any text, or a non-empty list of messages."""
    if isinstance(value, str):
        return value
    return v.messages(_text_or_list(value, field), field)


def _completion(value: Any, field: str) -> str | list[dict]:
    """A completion: non-blank text, or messages with at least one assistant message."""
    if isinstance(value, str):
        return v.text(value, field)
    turns = v.messages(_text_or_list(value, field), field)
    if not any(m["role"] == "assistant" for m in turns):
        raise BadRow(EMPTY, field, "at least one assistant message", value)
    return turns


def _same_kind(prompt: Any, completion: Any, field: str) -> None:
    if isinstance(prompt, str) != isinstance(completion, str):
        raise BadRow(WRONG_TYPE, field, "the same kind as the prompt (both text or both messages)", completion)


def _with_system(row: dict, prompt: list[dict]) -> list[dict]:
    system = v.get(row, "system", str, "a string", optional=True)
    if system and not (prompt and prompt[0]["role"] == "system"):
        return [{"role": "system", "content": system}] + prompt
    return prompt


def _split_shared(chosen: Any, rejected: Any, fallback_prompt: Any = None) -> tuple[Any, Any, Any]:
    """Implicit prompt: the messages (or whole words) chosen and rejected start with."""
    _same_kind(chosen, rejected, "rejected")
    if isinstance(chosen, str):
        shared = os.path.commonprefix([chosen, rejected])
        cut = max(shared.rfind(" "), shared.rfind("\n")) + 1
        return chosen[:cut], v.text(chosen[cut:], "chosen"), v.text(rejected[cut:], "rejected")
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    for field, turns in (("chosen", chosen), ("rejected", rejected)):
        if not any(m["role"] == "assistant" for m in turns[n:]):
            raise BadRow(EMPTY, field, "an assistant message after the messages chosen and rejected share", turns)
    prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    if not prompt and isinstance(fallback_prompt, str) and fallback_prompt.strip():
        prompt = [{"role": "user", "content": fallback_prompt}]
    if not prompt:
        raise BadRow(MISSING, "prompt", "a prompt, or chosen and rejected conversations that start alike")
    return prompt, chosen, rejected


def _margin(row: dict, example: dict) -> dict:
    if "margin" in row:
        example["margin"] = float(v.get(row, "margin", (int, float), "a number"))
    return example


# ---- TRL (standard and conversational) ------------------------------------------------------------

def _preference(row: dict) -> dict:
    """``[prompt], chosen, rejected``; without a prompt (or a text prompt beside message lists) it is implicit."""
    chosen, rejected = _completion(row.get("chosen"), "chosen"), _completion(row.get("rejected"), "rejected")
    given = row.get("prompt")
    if given is None or (isinstance(given, str) and not isinstance(chosen, str)):
        prompt, chosen, rejected = _split_shared(chosen, rejected, given)
    else:
        prompt = _prompt(given, "prompt")
        _same_kind(prompt, chosen, "chosen")
        _same_kind(prompt, rejected, "rejected")
    return _margin(row, {"prompt": prompt, "chosen": chosen, "rejected": rejected})


def _unpaired(row: dict) -> dict:
    example = _prompt_completion(row)
    example["label"] = v.label(row.get("label"))
    return example


def _prompt_completion(row: dict) -> dict:
    prompt, completion = _prompt(row.get("prompt"), "prompt"), _completion(row.get("completion"), "completion")
    _same_kind(prompt, completion, "completion")
    return {"prompt": prompt, "completion": completion}


def _messages(row: dict) -> dict:
    """A conversation: the prompt is everything before the first assistant message."""
    turns = v.messages(row.get("messages"), "messages")
    first = next((i for i, m in enumerate(turns) if m["role"] == "assistant"), len(turns))
    if first == 0:
        raise BadRow(MISSING, "messages", "a user or system message before the first assistant reply", row["messages"])
    return {"prompt": turns[:first], "completion": turns[first:]}


def _text(row: dict) -> dict:
    return {"prompt": "", "completion": v.text(v.get(row, "text", str, "a string"), "text")}


def _prompt_only(row: dict) -> dict:
    return {"prompt": _prompt(row.get("prompt"), "prompt")}


def _stepwise(row: dict) -> dict:
    """TRL's stepwise supervision: ``prompt``, ``completions`` (the reply's steps) and ``labels`` (whether each
    step is correct)."""
    steps = v.get(row, "completions", list, "a non-empty list of step texts")
    if not steps:
        raise BadRow(EMPTY, "completions", "a non-empty list of step texts", steps)
    labels = v.get(row, "labels", list, "a list of true/false, one per step")
    if len(labels) != len(steps):
        raise BadRow(WRONG_TYPE, "labels", f"{len(steps)} labels, one per step", labels)
    return {"prompt": _prompt(row.get("prompt"), "prompt"), "steps": [v.text(s, "completions") for s in steps],
            "step_labels": [v.label(label, "labels") for label in labels]}


def _tokenized(row: dict) -> dict:
    """``input_ids`` with ``completion_mask`` (TRL), or ``labels`` (-100 = no loss, axolotl), or neither (all trained)."""
    ids = v.get(row, "input_ids", list, "a list of token ids")
    if not ids or not all(isinstance(i, int) and i >= 0 for i in ids):
        raise BadRow(WRONG_TYPE, "input_ids", "a non-empty list of token ids >= 0", ids)
    if "completion_mask" in row:
        mask = v.get(row, "completion_mask", list, "a list of 0/1 per token")
    elif "labels" in row:
        mask = [int(label != -100) for label in v.get(row, "labels", list, "a list of ids or -100 per token")]
    else:
        mask = [1] * len(ids)
    if len(mask) != len(ids) or not all(m in (0, 1) for m in mask):
        raise BadRow(WRONG_TYPE, "completion_mask", f"{len(ids)} values of 0 or 1 (one per token)", mask)
    if not any(mask):
        field = "completion_mask" if "completion_mask" in row else "labels"
        raise BadRow(EMPTY, field, "at least one trained token (labels not all -100, completion_mask not all 0)")
    return {"tokens": (ids, [int(m) for m in mask])}


# ---- ms-swift ---------------------------------------------------------------------------------------

def _swift_turns(row: dict) -> tuple[list[dict], list[dict]]:
    turns = v.messages(row.get("messages"), "messages")
    if turns[-1]["role"] != "assistant" or len(turns) < 2:
        raise BadRow(WRONG_TYPE, "messages", "a conversation ending with the assistant's reply", row.get("messages"))
    return turns[:-1], turns[-1:]


def _swift_preference(row: dict) -> dict:
    prompt, chosen = _swift_turns(row)
    rejected = v.text(v.get(row, "rejected_response", str, "a string"), "rejected_response")
    return _margin(row, {"prompt": prompt, "chosen": chosen, "rejected": _assistant(rejected)})


def _swift_kto(row: dict) -> dict:
    prompt, completion = _swift_turns(row)
    return {"prompt": prompt, "completion": completion, "label": v.label(row.get("label"))}


# ---- axolotl ----------------------------------------------------------------------------------------

def _reply(row: dict, field: str) -> list[dict]:
    return _assistant(v.text(v.get(row, field, str, "a string"), field))


def _instruction(field: str, chosen: str = "chosen", rejected: str = "rejected") -> Callable[[dict], dict]:
    """``system?``, a user text in ``field``, then a chosen/rejected pair or a labelled ``completion``."""

    def convert(row: dict) -> dict:
        question = v.text(v.get(row, field, str, "a string"), field, v.EMPTY_PROMPT)
        prompt = _with_system(row, [{"role": "user", "content": question}])
        if "completion" in row:
            return {"prompt": prompt, "completion": _reply(row, "completion"), "label": v.label(row.get("label"))}
        return {"prompt": prompt, "chosen": _reply(row, chosen), "rejected": _reply(row, rejected)}

    return convert


def _conversation_pair(row: dict) -> dict:
    """``system?``, ``prompt?``, chosen/rejected conversations (``ultra``, ``argilla_chat``); ``completion`` + label for KTO."""
    if "completion" in row:
        return _instruction("prompt")(row)
    example = _preference(row)
    if isinstance(example["prompt"], str):
        raise BadRow(WRONG_TYPE, "chosen", "a list of messages", row.get("chosen"))
    example["prompt"] = _with_system(row, example["prompt"])
    return example


def _chat_template_default(row: dict) -> dict:
    """``messages``, plus single ``chosen`` / ``rejected`` assistant messages for preference data."""
    if "chosen" not in row:
        return _messages(row)
    prompt = v.messages(row.get("messages"), "messages")
    pair = {}
    for field in ("chosen", "rejected"):
        reply = v.message(v.get(row, field, dict, "an assistant message"), field)
        pair[field] = _assistant(v.text(reply["content"], field))
    return {"prompt": prompt, **pair}


_UNPAIRED = ("completion", "label")
_AXOLOTL = {
    "intel": Format(_instruction("question"), ("system", "question", "chosen", "rejected") + _UNPAIRED),
    "argilla": Format(
        _instruction("instruction", "chosen_response", "rejected_response"),
        ("system", "instruction", "chosen_response", "rejected_response") + _UNPAIRED,
    ),
    "icr": Format(_instruction("input"), ("system", "input", "chosen", "rejected") + _UNPAIRED),
    "prompt_pairs": Format(_instruction("prompt"), ("system", "prompt", "chosen", "rejected") + _UNPAIRED),
    "ultra": Format(_conversation_pair, ("system", "prompt", "chosen", "rejected") + _UNPAIRED),
    "argilla_chat": Format(_conversation_pair, ("system", "prompt", "chosen", "rejected") + _UNPAIRED),
    "default": Format(_chat_template_default, ("messages", "chosen", "rejected")),
}
_FAMILIES = {"chatml": "chatml", "llama3": None, "chat_template": None}

FORMATS: dict[str, Format] = {
    "preference": Format(_preference, ("prompt", "chosen", "rejected", "margin")),
    "unpaired_preference": Format(_unpaired, ("prompt", "completion", "label")),
    "prompt_completion": Format(_prompt_completion, ("prompt", "completion")),
    "messages": Format(_messages, ("messages",)),
    "text": Format(_text, ("text",)),
    "prompt_only": Format(_prompt_only, ("prompt",)),
    "stepwise_supervision": Format(_stepwise, ("prompt", "completions", "labels")),
    "tokenized": Format(_tokenized, ("input_ids", "completion_mask", "labels", "attention_mask")),
    "swift.preference": Format(_swift_preference, ("messages", "rejected_response", "margin")),
    "swift.kto": Format(_swift_kto, ("messages", "label")),
    **{
        f"{family}.{variant}": Format(fmt.convert, fmt.fields, template)
        for family, template in _FAMILIES.items()
        for variant, fmt in _AXOLOTL.items()
    },
    **{variant: fmt for variant, fmt in _AXOLOTL.items() if variant != "default"},  # the configured template
}
FORMATS["chat_template.argilla"] = _AXOLOTL["ultra"]  # axolotl's ORPO type: chosen/rejected conversations
FORMATS["chat_template"] = FORMATS["messages"]  # axolotl's SFT type for message lists
FORMATS["completion"] = FORMATS["text"]  # axolotl's raw-text type

# First match wins: the columns that identify each type when the spec names none.
_DETECTION = (
    ("tokenized", {"input_ids"}),
    ("swift.preference", {"messages", "rejected_response"}),
    ("swift.kto", {"messages", "label"}),
    ("chat_template.default", {"messages", "chosen", "rejected"}),
    ("argilla", {"instruction", "chosen_response", "rejected_response"}),
    ("argilla", {"instruction", "completion", "label"}),
    ("intel", {"question", "chosen", "rejected"}),
    ("intel", {"question", "completion", "label"}),
    ("preference", {"chosen", "rejected"}),
    ("unpaired_preference", {"prompt", "completion", "label"}),
    ("stepwise_supervision", {"prompt", "completions", "labels"}),
    ("prompt_completion", {"prompt", "completion"}),
    ("messages", {"messages"}),
    ("text", {"text"}),
    ("prompt_only", {"prompt"}),
)


def detect_format(columns: list[str], source: str) -> str:
    """The format name for a dataset with these columns; ``ValueError`` when none fits."""
    present = set(columns)
    for name, needed in _DETECTION:
        if needed <= present:
            return name
    raise ValueError(
        f"{source}: cannot tell the data format from columns {sorted(present)}; "
        f"set `type:` to one of {sorted(FORMATS)} or rename columns with `columns:`"
    )


def get_format(name: str, source: str) -> Format:
    """The table entry for ``name``; ``ValueError`` listing the known types otherwise."""
    if name not in FORMATS:
        raise ValueError(f"{source}: type: expected one of {sorted(FORMATS)}, got {name!r}")
    return FORMATS[name]
