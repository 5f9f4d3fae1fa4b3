"""Data layer: load rows (TRL, ms-swift, axolotl formats), tokenise once, collate shifted batches.

    specs = [DatasetSpec.from_dict(entry) for entry in config.datasets]
    data_config = DataConfig(max_length=..., max_prompt_length=..., on_bad_row=...)
    train = prepare_dataset(specs, tokenizer, "dpo", data_config)        # datasets.Dataset
    collate = make_collator("dpo", pad_token_id(tokenizer), data_config)
    loader = DataLoader(train, batch_size=4, shuffle=True, collate_fn=collate)
"""
from .collate import IGNORE_INDEX, make_collator, pad_token_id, shift_labels
from .formats import FORMATS, detect_format
from .loading import Provenance, load_rows
from .pipeline import prepare_dataset, tokenize_dataset
from .spec import DATA_KINDS, DataConfig, DatasetSpec, data_kind
from .templates import TEMPLATES

__all__ = [
    "DATA_KINDS",
    "FORMATS",
    "IGNORE_INDEX",
    "TEMPLATES",
    "DataConfig",
    "DatasetSpec",
    "Provenance",
    "data_kind",
    "detect_format",
    "load_rows",
    "make_collator",
    "pad_token_id",
    "prepare_dataset",
    "shift_labels",
    "tokenize_dataset",
]
