"""Tiny randomly initialised causal LMs saved to disk with the tiny test tokenizer, and config builders."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tokenizer_fixture import FIXTURES, tiny_tokenizer

REPO = Path(__file__).resolve().parent.parent
DEMO_TRAIN = REPO / "data" / "demo" / "preferences_train.jsonl"
DEMO_HELDOUT = REPO / "data" / "demo" / "preferences_heldout.jsonl"

# Training data per algorithm (a fixture or the shipped demo preferences).
DATA = {
    "sft": str(FIXTURES / "trl_prompt_completion.jsonl"),
    "kd": str(FIXTURES / "kd_tokenized.jsonl"),
    "kto": str(FIXTURES / "trl_unpaired.jsonl"),
}


def save_tiny_model(folder: Path, tie_embeddings: bool = True, seed: int = 0) -> Path:
    """A 2-layer Llama with the tiny tokenizer's vocabulary, saved (safetensors) with the tokenizer."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=tie_embeddings, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def train_config(model_dir: Path, out: Path, rl: str, **overrides) -> dict:
    """A small config dict for ``rl`` on the tiny model (raw, before validation)."""
    path = DATA.get(rl, str(DEMO_TRAIN))
    raw = {
        "base_model": str(model_dir), "rl": rl, "datasets": [{"path": path}],
        "test_datasets": [{"path": path if rl in DATA else str(DEMO_HELDOUT)}],
        "output_dir": str(out), "max_length": 64, "max_prompt_length": 32, "micro_batch_size": 2,
        "learning_rate": 5e-3, "lr_scheduler": "constant", "max_steps": 8, "seed": 3, "tensorboard": False,
        "plot": False, "progress_bar": False, "kernel_backend": "torch",
    }
    raw.update(overrides)
    return raw
