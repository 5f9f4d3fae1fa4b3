"""A tiny byte-level BPE tokenizer built in memory (no download) for the data tests."""
from __future__ import annotations

import functools
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from fusedrl.engine.data.templates import CHATML

FIXTURES = Path(__file__).parent / "fixtures" / "data"
SPECIALS = ["<pad>", "<bos>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "What is two plus two? Two plus two is four.",
    "The sky is blue. The grass is green. Paris is the capital of France.",
    "You are a helpful assistant. Answer briefly and politely.",
    "Write a short poem about the sea and the moon.",
]


@functools.cache
def tiny_tokenizer(chat_template: bool = True, add_bos: bool = False) -> PreTrainedTokenizerFast:
    """Byte-level BPE (any text encodes), pad ``<pad>``, EOS ``<|im_end|>``; optionally a
    chatml template and a ``<bos>`` the tokenizer prepends like Llama's."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
        )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>", bos_token="<bos>" if add_bos else None
    )
    wrapped.name_or_path = f"tiny-bpe-bos{int(add_bos)}"
    if chat_template:
        wrapped.chat_template = CHATML
    return wrapped


def prepare(name: str, algorithm: str, cache_dir, tokenizer=None, spec: dict | None = None, **config):
    """Tokenise fixture ``name`` for ``algorithm`` and collate all its rows into one batch: ``(dataset, batch)``."""
    from fusedrl.engine.data import DataConfig, make_collator, pad_token_id, prepare_dataset

    tokenizer = tokenizer or tiny_tokenizer()
    data_config = DataConfig(cache_dir=str(cache_dir), **config)
    ds = prepare_dataset({"path": str(FIXTURES / name), **(spec or {})}, tokenizer, algorithm, data_config)
    return ds, make_collator(algorithm, pad_token_id(tokenizer), data_config)(list(ds))


def trained_text(tokenizer, input_ids, labels) -> list[str]:
    """Per row, the decoded tokens that carry a label (the tokens at positions t + 1 of labelled t)."""
    return [tokenizer.decode(row[lab != -100].tolist()) for row, lab in zip(input_ids[:, 1:], labels[:, :-1])]


def label_text(tokenizer, labels) -> list[str]:
    """Per row, the decoded label ids."""
    return [tokenizer.decode(lab[lab != -100].tolist()) for lab in labels]
