"""From a training config to tokenised train / held-out rows and the collator of the algorithm."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import datasets

from .config import TrainConfig
from .data import DataConfig, make_collator, pad_token_id, prepare_dataset

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """Tokenised rows (``datasets.Dataset``) for training and evaluation, and the batch collator."""

    train: datasets.Dataset
    eval: datasets.Dataset | list
    collate: Callable[[list[dict]], dict]


def data_config(config: TrainConfig) -> DataConfig:
    """The data layer's view of a training config."""
    return DataConfig(max_length=config.max_length, max_prompt_length=config.max_prompt_length,
                      chat_template=config.chat_template, on_bad_row=config.on_bad_row,
                      num_proc=config.dataset_num_proc, kd_top_k=config.kd_top_k, packing=config.sample_packing,
                      kl_pairs=config.effective_loss_type == "kto", step_separator=config.step_separator)


def load_training_data(config: TrainConfig, tokenizer, kind: str) -> TrainingData:
    """Tokenise ``datasets`` (and ``test_datasets``, or a ``val_set_size`` split) as rows of ``kind`` (the
    algorithm's ``data_kind``: ``sft``, ``pairwise``, ``kto``, ``prompt``, ``kd`` or ``stepwise``)."""
    dc = data_config(config)
    train = prepare_dataset(config.datasets, tokenizer, kind, dc)
    if config.test_datasets:
        held_out = prepare_dataset(config.test_datasets, tokenizer, kind, dc)
    elif config.val_set_size > 0:
        split = train.train_test_split(test_size=config.val_set_size, seed=config.seed, shuffle=True)
        train, held_out = split["train"], split["test"]
    else:
        held_out = []
    log.info("%d training rows, %d held-out rows for rl=%s", len(train), len(held_out), config.rl)
    return TrainingData(train, held_out, make_collator(kind, pad_token_id(tokenizer), dc))
