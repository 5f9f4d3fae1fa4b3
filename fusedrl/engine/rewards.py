"""Reward functions for online RL: built-ins, user functions by dotted or file path, and safe calling.

A reward function is ``f(prompts, completions, **columns) -> list[float | None]``:
``prompts`` as the dataset gives them (text or message lists), ``completions`` as
text (or ``[{"role": "assistant", "content": text}]`` when the prompt is a message
list), and ``columns`` the dataset's other fields (``solution``, ...) plus
``completion_ids`` (token ids, EOS included). ``None`` leaves that sample out of
that function's share of the reward.

``reward_funcs`` entries: a built-in name (``accuracy``, ``format``, ``length``),
``package.module:function`` / ``package.module.function``, or
``path/to/file.py:function``.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import re
import sys
import traceback
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

DEFAULT_FORMAT_PATTERN = r"(?s)^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$"
PREVIEW_CHARS = 120

RewardFn = Callable[..., list]


class RewardFunctionError(RuntimeError):
    """A reward function raised or returned something other than one number (or None) per sample."""


def completion_text(completion) -> str:
    """The text of a completion given as text or as ``[{"role": "assistant", "content": ...}]``."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


# ---- final-answer extraction -------------------------------------------------------------------

_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?"
_ANSWER_IS = re.compile(r"answer\s*(?:is|=|:)\s*:?\s*(.+?)(?:\n|$)", re.IGNORECASE)


def _boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (nested braces allowed), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def normalize_answer(text: str) -> str:
    """Lower-case; drop ``$``, markdown emphasis, ``\\text{}`` wrappers, surrounding whitespace and trailing
    periods; ``\\frac{a}{b}`` becomes ``a/b``; collapse spaces."""
    text = text.replace("$", "").replace("**", "").strip().strip("*").strip()
    text = re.sub(r"\\(?:text|mathrm)\{([^}]*)\}", r"\1", text)
    text = re.sub(r"\\d?frac\{([^{}]*)\}\{([^{}]*)\}", r"\1/\2", text)
    text = re.sub(r"\s+", " ", text).rstrip(".;:!").strip()
    return text.lower()


def as_number(text: str) -> Fraction | None:
    """``text`` as an exact number when it is one (commas as thousands separators, ``a/b``, decimals)."""
    cleaned = normalize_answer(text).replace(",", "").replace(" ", "")
    if not re.fullmatch(r"[-+]?\d+(?:\.\d+)?(?:/\d+)?", cleaned):
        return None
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def extract_answer(text: str) -> str | None:
    """The final answer of a completion; None for an empty one.

    In order: the last ``\\boxed{...}``; what follows the last "answer is" / "answer:" (after
    its last ``=``, and its first number when it is not a number itself); the last number;
    the whole stripped text.
    """
    boxed = _boxed(text)
    if boxed is not None:
        return boxed.strip()
    stated = _ANSWER_IS.findall(text)
    candidate = stated[-1].rpartition("=")[2].strip().rstrip(".").strip() if stated else ""
    if candidate:
        numbers = re.findall(_NUMBER, candidate)
        return numbers[0] if numbers and as_number(candidate) is None else candidate
    numbers = re.findall(_NUMBER, text)
    if numbers:
        return numbers[-1]
    return text.strip() or None


def answers_match(predicted: str | None, reference) -> bool:
    """Numeric equality when both sides are numbers, else equality of the normalised texts."""
    if predicted is None or reference is None:
        return False
    ref_text = str(reference)
    ref_number, pred_number = as_number(ref_text), as_number(predicted)
    if ref_number is not None:
        return pred_number == ref_number
    return normalize_answer(predicted) == normalize_answer(ref_text)


# ---- built-ins ---------------------------------------------------------------------------------

def accuracy(prompts, completions, solution=None, answer=None, **_) -> list[float | None]:
    """1.0 when the completion's final answer (``extract_answer``) equals the ``solution`` (or ``answer``)
    column, numerically or as normalised text; 0.0 otherwise; None where the row has no reference."""
    references = solution if solution is not None else answer
    if references is None:
        raise ValueError("accuracy needs a 'solution' or 'answer' column in the dataset")
    return [None if ref is None else float(answers_match(extract_answer(completion_text(c)), _boxed(str(ref)) or ref))
            for c, ref in zip(completions, references)]


def format_reward(pattern: str) -> RewardFn:
    """``format``: 1.0 when ``re.search(pattern, completion)`` matches, else 0.0 (``reward_format_pattern``)."""
    compiled = re.compile(pattern)

    def matches_format(prompts, completions, **_) -> list[float]:
        return [float(compiled.search(completion_text(c)) is not None) for c in completions]

    return matches_format


def length_reward(max_completion_length: int) -> RewardFn:
    """``length``: ``-tokens / max_completion_length`` in [-1, 0) (shorter is better; weight it to taste)."""

    def length(prompts, completions, completion_ids, **_) -> list[float]:
        return [-len(ids) / max_completion_length for ids in completion_ids]

    return length


def soft_overlong_reward(max_completion_length: int, soft_punish_cache: int) -> RewardFn:
    """``soft_overlong``: DAPO's soft overlong punishment (TRL's ``get_soft_overlong_punishment``): 0 up to
    ``max_completion_length - soft_punish_cache`` tokens, then falling linearly to -1 at
    ``max_completion_length`` (-1 beyond)."""
    free = max_completion_length - soft_punish_cache

    def soft_overlong(prompts, completions, completion_ids, **_) -> list[float]:
        return [0.0 if len(ids) <= free else max(-1.0, (free - len(ids)) / soft_punish_cache)
                for ids in completion_ids]

    return soft_overlong


# ---- loading -----------------------------------------------------------------------------------

@dataclass
class RewardFunction:
    """A named reward function; ``name`` is what ``rewards/<name>/mean`` and error messages show."""

    name: str
    fn: RewardFn


def _from_file(path: Path, attr: str, spec: str) -> RewardFn:
    module_name = f"fusedrl_user_rewards_{abs(hash(str(path.resolve())))}"
    module = sys.modules.get(module_name)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as err:
            del sys.modules[module_name]
            raise ValueError(f"reward_funcs: {spec!r}: importing {path} failed: {type(err).__name__}: {err}") from err
    if not hasattr(module, attr):
        raise ValueError(f"reward_funcs: {spec!r}: {path} has no function {attr!r}")
    return getattr(module, attr)


def _from_module(module_name: str, attr: str, spec: str) -> RewardFn:
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"reward_funcs: {spec!r}: cannot import module {module_name!r} ({err})") from err
    if not hasattr(module, attr):
        raise ValueError(f"reward_funcs: {spec!r}: module {module_name!r} has no attribute {attr!r}")
    return getattr(module, attr)


def load_reward_function(spec: str, *, format_pattern: str = DEFAULT_FORMAT_PATTERN,
                         max_completion_length: int = 512, soft_punish_cache: int | None = None) -> RewardFunction:
    """Resolve one ``reward_funcs`` entry (module docstring); errors name the entry."""
    builtins = {"accuracy": lambda: accuracy, "format": lambda: format_reward(format_pattern),
                "length": lambda: length_reward(max_completion_length),
                "soft_overlong": lambda: soft_overlong_reward(max_completion_length, soft_punish_cache)}
    if spec == "soft_overlong" and not (soft_punish_cache and 0 < soft_punish_cache <= max_completion_length):
        raise ValueError(f"reward_funcs: 'soft_overlong' needs soft_punish_cache in [1, max_completion_length = "
                         f"{max_completion_length}] (the tokens before the limit over which the penalty grows), "
                         f"got {soft_punish_cache!r}")
    if spec in builtins:
        return RewardFunction(spec, builtins[spec]())
    target, colon, attr = spec.rpartition(":")
    if colon and target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ValueError(f"reward_funcs: {spec!r}: file {path} not found (relative to {Path.cwd()})")
        fn = _from_file(path, attr, spec)
    elif colon:
        fn = _from_module(target, attr, spec)
    elif "." in spec:
        module_name, _, attr = spec.rpartition(".")
        fn = _from_module(module_name, attr, spec)
    else:
        raise ValueError(f"reward_funcs: {spec!r}: expected one of {sorted(builtins)}, 'package.module:function' "
                         f"or 'file.py:function'")
    if not callable(fn):
        raise ValueError(f"reward_funcs: {spec!r} is not callable")
    return RewardFunction(getattr(fn, "__name__", attr) or attr, fn)


def load_reward_functions(specs: list[str], *, format_pattern: str = DEFAULT_FORMAT_PATTERN,
                          max_completion_length: int = 512, soft_punish_cache: int | None = None
                          ) -> list[RewardFunction]:
    """Every ``reward_funcs`` entry, with unique names (a repeated name gets ``_2``, ``_3``, ...)."""
    out: list[RewardFunction] = []
    for spec in specs:
        func = load_reward_function(spec, format_pattern=format_pattern, max_completion_length=max_completion_length,
                                    soft_punish_cache=soft_punish_cache)
        taken = {f.name for f in out}
        name, n = func.name, 1
        while name in taken:
            n += 1
            name = f"{func.name}_{n}"
        out.append(RewardFunction(name, func.fn))
    return out


# ---- calling -----------------------------------------------------------------------------------

def _preview(value) -> str:
    """A prompt or completion (text or messages) as a short one-line quoted string."""
    text = completion_text(value) if isinstance(value, list) else str(value)
    return repr(text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "...")


def _sample(prompts, completions, index: int) -> str:
    return f"sample {index} (prompt {_preview(prompts[index])}, completion {_preview(completions[index])})"


def _where(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    return f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""


def _columns_of(columns: dict, index: int) -> dict:
    return {k: v[index:index + 1] for k, v in columns.items()}


def _failing_sample(func: RewardFunction, prompts, completions, columns: dict) -> int | None:
    """The first sample the function also fails on alone (None when every sample passes on its own)."""
    for i in range(len(completions)):
        try:
            func.fn(prompts=prompts[i:i + 1], completions=completions[i:i + 1], **_columns_of(columns, i))
        except Exception:
            return i
    return None


def call_reward_function(func: RewardFunction, prompts: list, completions: list, columns: dict) -> list[float | None]:
    """``func`` on the batch, checked: one finite number (or None) per sample.

    Raises ``RewardFunctionError`` naming the function, the error and the offending
    sample (found by re-running the function one sample at a time).
    """
    try:
        values = func.fn(prompts=prompts, completions=completions, **columns)
    except Exception as err:
        index = _failing_sample(func, prompts, completions, columns)
        where = _sample(prompts, completions, index) if index is not None else \
            f"a batch of {len(completions)} samples (no single sample fails alone; first: " \
            f"{_sample(prompts, completions, 0)})"
        raise RewardFunctionError(f"reward function {func.name!r} raised {type(err).__name__}: {err}"
                                  f"{_where(err)} on {where}") from err
    if not isinstance(values, (list, tuple)) or len(values) != len(completions):
        got = f"{len(values)} values" if isinstance(values, (list, tuple)) else type(values).__name__
        raise RewardFunctionError(f"reward function {func.name!r}: expected a list of {len(completions)} rewards "
                                  f"(one per completion), got {got}")
    out: list[float | None] = []
    for i, value in enumerate(values):
        if value is not None and (isinstance(value, str) or not isinstance(value, (int, float))
                                  or not math.isfinite(float(value))):
            raise RewardFunctionError(f"reward function {func.name!r}: expected a finite number or None, got "
                                      f"{value!r} for {_sample(prompts, completions, i)}")
        out.append(None if value is None else float(value))
    return out
