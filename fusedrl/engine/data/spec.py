"""What to load (``DatasetSpec``), how to tokenise it (``DataConfig``) and which batch each algorithm gets."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# The batch family each algorithm trains on; see collate.py for the keys of each.
DATA_KINDS = {
    "sft": "sft",
    "dpo": "pairwise",
    "ipo": "pairwise",
    "cpo": "pairwise",
    "simpo": "pairwise",
    "orpo": "pairwise",
    "rm": "pairwise",
    "kto": "kto",
    "ppo": "prompt",
    "grpo": "prompt",
    "rloo": "prompt",
    "online_dpo": "prompt",
    "kd": "kd",
    "prm": "stepwise",
}
KINDS = ("sft", "pairwise", "kto", "prompt", "kd", "stepwise")
BAD_ROW_POLICIES = ("error", "skip")


def data_kind(algorithm: str) -> str:
    """Map an algorithm name (``dpo``, ``grpo``, ...) or a kind (``pairwise``, ...) to its batch kind."""
    if algorithm in KINDS:
        return algorithm
    if algorithm not in DATA_KINDS:
        raise ValueError(f"algorithm: expected one of {sorted(DATA_KINDS)} or a kind in {KINDS}, got {algorithm!r}")
    return DATA_KINDS[algorithm]


@dataclass
class DatasetSpec:
    """One entry of the config's ``datasets:`` list, spelled like axolotl's.

    - ``path``: a local file, a local folder (of data files, or one written by
      ``Dataset.save_to_disk``), a builder name (``json``, ``parquet``, ``csv``)
      used with ``data_files``, or a hub dataset id.
    - ``type``: the row format (``formats.FORMATS``); ``None`` detects it from the columns.
    - ``split``, ``name``, ``revision``: hub split / config / revision (local files are read whole).
    - ``ds_type``: builder of local files when the extension does not tell (``json``, ...).
    - ``data_files``: files (relative to a folder ``path``, or absolute) to read.
    - ``columns``: renames applied before format detection, ``{"conversations": "messages"}``.
    """

    path: str
    type: str | None = None
    split: str = "train"
    ds_type: str | None = None
    data_files: str | list[str] | None = None
    name: str | None = None
    revision: str | None = None
    columns: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, entry: dict) -> DatasetSpec:
        """Build from a config mapping; an unknown key raises ``ValueError`` naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ValueError(f"datasets entry {entry.get('path')!r}: unknown key {unknown[0]!r}; expected {sorted(known)}")
        return cls(**entry)


@dataclass
class DataConfig:
    """How rows become token ids; the field names match the training config's.

    Truncation (``tokenize.truncate``): the prompt keeps its *last*
    ``max_prompt_length`` tokens, then the completion loses its *tail* so the
    sequence fits ``max_length``; a prompt that leaves no room for one completion
    token makes the row bad. ``chat_template`` is ``None`` (the tokenizer's, else
    chatml), a name in ``templates.TEMPLATES`` or a Jinja string. ``kd_top_k`` cuts
    every teacher position to its k most likely ids (needed when positions carry
    different numbers of ids). ``packing`` packs SFT/KD rows (collate.py). ``kl_pairs``:
    KTO batches carry the mismatched pairs of KTO's KL baseline (its other loss types read none).
    ``step_separator``: the text after each step of a stepwise reply (process reward modelling).
    """

    max_length: int = 1024
    max_prompt_length: int | None = None
    chat_template: str | None = None
    on_bad_row: str = "error"
    num_proc: int | None = None
    kd_top_k: int | None = None
    cache_dir: str | None = None
    packing: bool = False
    kl_pairs: bool = True
    step_separator: str = "\n"

    def __post_init__(self) -> None:
        if self.on_bad_row not in BAD_ROW_POLICIES:
            raise ValueError(f"on_bad_row: expected one of {BAD_ROW_POLICIES}, got {self.on_bad_row!r}")
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise ValueError(f"max_length: expected an int >= 2, got {self.max_length!r}")
        if self.max_prompt_length is not None and not 1 <= self.max_prompt_length < self.max_length:
            raise ValueError(
                f"max_prompt_length: expected 1 <= max_prompt_length < max_length={self.max_length}, "
                f"got {self.max_prompt_length!r}"
            )
        if self.kd_top_k is not None and self.kd_top_k < 1:
            raise ValueError(f"kd_top_k: expected an int >= 1, got {self.kd_top_k!r}")
