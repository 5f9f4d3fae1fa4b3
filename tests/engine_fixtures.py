"""Tiny randomly initialised causal LMs saved to disk with the tiny test tokenizer, and config builders."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from tokenizer_fixture import FIXTURES, tiny_tokenizer

REPO = Path(__file__).resolve().parent.parent
DEMO_TRAIN = REPO / "data" / "demo" / "preferences_train.jsonl"
DEMO_HELDOUT = REPO / "data" / "demo" / "preferences_heldout.jsonl"

# Training data per algorithm (a fixture or the shipped demo preferences).
DATA = {
    "sft": str(FIXTURES / "trl_prompt_completion.jsonl"),
    "kd": str(FIXTURES / "kd_tokenized.jsonl"),
    "kto": str(FIXTURES / "trl_unpaired.jsonl"),
    "prm": str(FIXTURES / "trl_stepwise.jsonl"),
}


# Model families whose logits are transformed after the lm_head, each transform made large enough to matter
# on a tiny random model (logits of a few units at most): config overrides of the family.
TRANSFORM_FAMILY_CONFIGS = {
    "gemma2": {"model_type": "gemma2", "final_logit_softcapping": 0.5, "head_dim": 8},
    "cohere": {"model_type": "cohere", "logit_scale": 4.0},
    "granite": {"model_type": "granite", "logits_scaling": 0.25},
    "minicpm3": {"model_type": "minicpm3", "dim_model_base": 128, "q_lora_rank": 16, "kv_lora_rank": 16,
                 "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8, "head_dim": 8,
                 "num_key_value_heads": 4},  # multi-head latent attention; logits_scaling 32 / 128
    "falcon_h1": {"model_type": "falcon_h1", "lm_head_multiplier": 3.0},
}
# Those quick enough to train in tests (Falcon-H1's Mamba layers run a slow reference path on CPU).
LOGIT_TRANSFORM_FAMILIES = ("gemma2", "cohere", "granite", "minicpm3")


def save_tiny_model(folder: Path, tie_embeddings: bool = True, seed: int = 0, family: str = "llama") -> Path:
    """A 2-layer causal LM (a Llama, or one of ``TRANSFORM_FAMILY_CONFIGS``) with the tiny tokenizer's
    vocabulary, saved (safetensors) with the tokenizer."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    shape = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                 tie_word_embeddings=tie_embeddings, pad_token_id=tokenizer.pad_token_id,
                 eos_token_id=tokenizer.eos_token_id)
    overrides = dict(TRANSFORM_FAMILY_CONFIGS.get(family, {"model_type": family}))
    config = AutoConfig.for_model(overrides.pop("model_type"), **{**shape, **overrides})
    AutoModelForCausalLM.from_config(config).save_pretrained(folder, safe_serialization=True)
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
