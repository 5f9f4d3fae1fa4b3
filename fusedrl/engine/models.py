"""Model loading (causal LMs, reward and value models), LoRA, checkpointing and compilation of the layers.

Full logits are never computed in training: the trainer runs the decoder stack,
takes its last hidden state ``[B, T, H]`` and hands it with the lm_head weight
``[V, H]`` (tied or not) to the fused kernels (``logit_head.py``).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .logit_head import check_fused_logits, final_hidden, unwrap_peft

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
VALUE_HEAD_FILE = "value_head.safetensors"
VALUE_MODEL_FOLDER = "value_model"


def _from_pretrained(auto_class, name_or_path: str, key: str, **kwargs):
    """``auto_class.from_pretrained``; a model or tokenizer that cannot be found or read raises ``ValueError``
    naming the config ``key`` and the path (transformers raises ``OSError`` or a bare ``ValueError``)."""
    try:
        return auto_class.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as err:
        offline = "" if os.environ.get("HF_HUB_OFFLINE") else "; without network, HF_HUB_OFFLINE=1 fails fast"
        raise ValueError(f"{key}: cannot load {name_or_path!r} (a local folder or a hub id{offline}): {err}") from None


def load_tokenizer(name_or_path: str, gguf_file: str | None = None, trust_remote_code: bool = False,
                   key: str = "tokenizer"):
    """The tokenizer of a local folder, hub id or GGUF file, with a pad token set (EOS when it has none)."""
    from transformers import AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = _from_pretrained(AutoTokenizer, name_or_path, key, trust_remote_code=trust_remote_code, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name_or_path: str, dtype: str = "float32", gguf_file: str | None = None,
                   trust_remote_code: bool = False, attn_implementation: str | None = None, key: str = "base_model",
                   on_meta: bool = False):
    """``AutoModelForCausalLM`` from a local folder, hub id, or a GGUF file (dequantized) in ``dtype``;
    ``key`` names the config key the path came from in errors; a model whose logits the fused path cannot
    reproduce is refused (``check_fused_logits``). ``on_meta``: the same model (config and generation config)
    with weights on the meta device, reading no weights (they arrive later: sharding.py)."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    gguf = {"gguf_file": gguf_file} if gguf_file else {}
    attention = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if on_meta:
        config = _from_pretrained(AutoConfig, name_or_path, key, trust_remote_code=trust_remote_code, **gguf)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code,
                                                     **attention)
        if not gguf_file:  # from_pretrained reads generation_config.json too (its EOS ids end sampling)
            with contextlib.suppress(OSError):
                model.generation_config = GenerationConfig.from_pretrained(name_or_path)
        model.eval()  # as from_pretrained leaves it
    else:
        model = _from_pretrained(AutoModelForCausalLM, name_or_path, key, dtype=DTYPES[dtype],
                                 trust_remote_code=trust_remote_code, **gguf, **attention)
        check_fused_logits(model, name_or_path, key)
    model.config.use_cache = False
    return model


def apply_lora(model, r: int, alpha: int, dropout: float, target_modules):
    """Wrap ``model`` with peft LoRA adapters (``target_modules`` a list or ``"all-linear"``)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                     task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def decoder_layers(models: list[nn.Module]) -> list[nn.Module]:
    """The decoder layers of ``models``: modules of the classes Hugging Face models name in ``_no_split_modules``."""
    names = {name for model in models for module in model.modules()
             for name in getattr(module, "_no_split_modules", None) or ()}
    return [m for model in models for m in model.modules() if type(m).__name__ in names]


COMPILE_RECOMPILE_LIMIT = 64


def compile_layers(models: list[nn.Module]) -> int:
    """``torch.compile`` each decoder layer of ``models`` in place, with dynamic shapes (batches vary in length);
    the same code compiles once for all layers, and names and checkpoints are unchanged. Returns how many.

    A run needs a graph per combination of grad mode (training, no-grad logps), padding (a mask or none)
    and a batch of one row or more, so dynamo's recompile limit (8 by default) is raised to
    ``COMPILE_RECOMPILE_LIMIT``: past it, a layer would silently run eagerly."""
    from torch._dynamo import config

    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.7
    setattr(config, limit, max(getattr(config, limit), COMPILE_RECOMPILE_LIMIT))
    layers = decoder_layers(models)
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


@contextlib.contextmanager
def adapters_disabled(model):
    """Inside the block a LoRA model behaves as its frozen base (the DPO-with-LoRA reference)."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    else:
        yield model


def enable_activation_checkpointing(model) -> None:
    """Recompute ``model``'s decoder-layer activations in the backward (non-reentrant checkpointing);
    recent transformers name it ``activation_checkpointing_enable``, older ``gradient_checkpointing_enable``."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def disable_dropout(model: nn.Module) -> int:
    """Set every dropout of ``model`` to 0: ``nn.Dropout`` modules (LoRA's included) and the float
    ``*dropout`` attributes attention layers pass to their attention functions. Returns how many it changed."""
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            changed += module.p > 0
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if name.endswith("dropout") and isinstance(value, float):
                changed += value > 0
                setattr(module, name, 0.0)
    return changed


def frozen_copy(model):
    """A detached, eval-mode, no-grad copy (the reference model)."""
    ref = copy.deepcopy(unwrap_peft(model))
    ref.eval()
    ref.requires_grad_(False)
    return ref


def load_weights(model, folder: str | Path) -> None:
    """Load safetensors weights saved by ``save_pretrained`` (full model or LoRA adapter) into ``model``.

    A ``RewardModel`` loads its backbone and ``value_head.safetensors``; a ``PolicyWithValue``
    loads the policy from ``folder`` and the value model from ``folder/value_model``.
    """
    folder = Path(folder)
    if isinstance(model, PolicyWithValue):
        load_weights(model.policy, folder)
        load_weights(model.value, folder / VALUE_MODEL_FOLDER)
        return
    if isinstance(model, RewardModel):
        load_weights(model.backbone, folder)
        model.value_head.load_state_dict(load_file(str(folder / VALUE_HEAD_FILE)))
        return
    adapter = folder / "adapter_model.safetensors"
    if adapter.is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(adapter)))
        return
    state = {}
    for shard in sorted(folder.glob("model*.safetensors")):
        state.update(load_file(str(shard)))
    if not state:
        raise FileNotFoundError(f"{folder}: no model*.safetensors or adapter_model.safetensors to load")
    missing, unexpected = unwrap_peft(model).load_state_dict(state, strict=False)
    tied = {k for k in missing if "lm_head" in k or "embed" in k}
    if set(missing) - tied or unexpected:
        raise ValueError(f"{folder}: weights do not match the model (missing {missing}, unexpected {unexpected})")


class RewardModel(nn.Module):
    """A causal LM backbone with a scalar value head ``H -> 1`` read at the last non-pad token.

    Saved as the backbone's Hugging Face files plus ``value_head.safetensors`` beside them.
    """

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        hidden = unwrap_peft(backbone).config.hidden_size
        self.value_head = nn.Linear(hidden, 1, bias=True)
        nn.init.normal_(self.value_head.weight, std=1.0 / (hidden + 1) ** 0.5)
        nn.init.zeros_(self.value_head.bias)
        self.value_head.to(next(backbone.parameters()).dtype)

    @classmethod
    def from_pretrained(cls, name_or_path: str, dtype: str = "float32", gguf_file: str | None = None,
                        trust_remote_code: bool = False, attn_implementation: str | None = None,
                        key: str = "reward_model", on_meta: bool = False) -> "RewardModel":
        """Backbone from ``name_or_path``; the value head from its ``value_head.safetensors`` when present
        (``on_meta``: see ``load_causal_lm``; the value head is then left as initialised)."""
        model = cls(load_causal_lm(name_or_path, dtype, gguf_file, trust_remote_code, attn_implementation, key=key,
                                   on_meta=on_meta))
        if not on_meta and not model.load_value_head(name_or_path):
            log.info("%s has no %s: the value head starts from random init", name_or_path, VALUE_HEAD_FILE)
        return model

    def load_value_head(self, folder: str) -> bool:
        """Load ``folder``'s ``value_head.safetensors`` into the value head; False (the head unchanged) when
        ``folder`` has none."""
        head = Path(folder) / VALUE_HEAD_FILE
        if not head.is_file():
            return False
        self.value_head.load_state_dict(load_file(str(head)))
        return True

    def token_values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token scalar values ``[B, T]`` (fp32) of ``input_ids [B, T]`` (``position_ids`` for left padding)."""
        hidden = final_hidden(self.backbone, input_ids, attention_mask, position_ids)
        return self.value_head(hidden).squeeze(-1).float()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Scores ``[B]`` at the last non-pad token of each right-padded row."""
        values = self.token_values(input_ids, attention_mask)
        last = attention_mask.long().sum(1).clamp(min=1) - 1
        return values.gather(1, last[:, None]).squeeze(1)

    def save_pretrained(self, folder: str, safe_serialization: bool = True) -> None:
        """Backbone files plus ``value_head.safetensors``."""
        self.backbone.save_pretrained(folder, safe_serialization=safe_serialization)
        state = {k: v.detach().cpu().contiguous() for k, v in self.value_head.state_dict().items()}
        save_file(state, str(Path(folder) / VALUE_HEAD_FILE))


class PolicyWithValue(nn.Module):
    """PPO's trainable module: the policy (causal LM) and the value model (a ``RewardModel``) side by side,
    so one optimizer, one gradient clip and one checkpoint cover both.

    Saved as the policy's Hugging Face files with the value model in ``value_model/`` beside them.
    """

    def __init__(self, policy, value: RewardModel):
        super().__init__()
        self.policy, self.value = policy, value

    def save_pretrained(self, folder: str, safe_serialization: bool = True) -> None:
        """Policy files in ``folder``, the value model (backbone + value head) in ``folder/value_model``."""
        self.policy.save_pretrained(folder, safe_serialization=safe_serialization)
        self.value.save_pretrained(str(Path(folder) / VALUE_MODEL_FOLDER), safe_serialization=safe_serialization)
