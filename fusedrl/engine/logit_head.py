"""What the fused loss path reads from a causal LM: its last hidden state and how its logits follow from it.

Most models compute ``logits = h @ W.T (+ b)``. Some transform them after the lm_head: Gemma-2 (and
Gemma-3/4, VaultGemma, nanochat) softcap them, Cohere multiplies them by ``logit_scale``, Granite and
MiniCPM3 divide by ``logits_scaling``, Falcon-H1 multiplies by ``lm_head_multiplier``, and a few cut
padding rows off the vocabulary. The fused kernels take all of it as

    logits = softcap(scale * (h @ W[:V].T + b[:V]))

with the scale applied to the hidden states (and the bias), so every algorithm trains the distribution
the model samples from. ``check_fused_logits`` proves that on the loaded model before training: a
transform not in ``TRANSFORM_KEYS`` (a model with remote code, say) stops the run instead of silently
training another objective.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..kernels.stats import apply_softcap

# config key -> which part of the transform it sets: the softcap, a factor or divisor of the scale, the vocabulary.
TRANSFORM_KEYS = {
    "final_logit_softcapping": "softcap",
    "logits_soft_cap": "softcap",
    "logit_scale": "multiply",
    "lm_head_multiplier": "multiply",
    "output_multiplier": "multiply",
    "logits_scaling": "divide",
    "logits_mup_width_multiplier": "divide",
    "unpadded_vocab_size": "vocab",
}
PROBE_TOKENS = 3
PROBE_TOLERANCE = {torch.float32: 1e-3, torch.float16: 3e-2, torch.bfloat16: 3e-2}


def unwrap_peft(model):
    """The transformers model under a peft wrapper (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_of(model) -> nn.Module:
    """The decoder stack of a causal LM (LoRA layers stay in place inside it)."""
    return unwrap_peft(model).get_decoder()


def lm_head_of(model) -> nn.Linear:
    """The output projection ``[V, H]`` (tied to the input embeddings or not)."""
    return unwrap_peft(model).get_output_embeddings()


def final_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Last hidden states ``[B, T, H]`` of ``input_ids [B, T]``; no logits are computed."""
    out = decoder_of(model)(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=False)
    return out.last_hidden_state


@dataclass(frozen=True)
class LogitTransform:
    """``logits = softcap(scale * lm_head(h))[..., :vocab]`` (``softcap`` and ``vocab`` None when absent)."""

    scale: float = 1.0
    softcap: float | None = None
    vocab: int | None = None


def logit_transform(config) -> LogitTransform:
    """The transform a transformers ``config`` applies after the lm_head (``TRANSFORM_KEYS``), read from its
    text model's config where it nests one (Gemma-3's multimodal ``text_config``, say)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale, softcap, vocab = 1.0, None, None
    for key, role in TRANSFORM_KEYS.items():
        value = getattr(config, key, None)
        if value is None or isinstance(value, bool):
            continue
        if role == "softcap":
            softcap = float(value) if value > 0 else None
        elif role == "vocab":
            vocab = int(value)
        else:
            scale = scale * value if role == "multiply" else scale / value
    return LogitTransform(float(scale), softcap, vocab)


@dataclass(frozen=True)
class LogitHead:
    """The fused kernels' view of a model's output layer: ``logits = softcap(inputs(h) @ weight.T + bias)``.

    ``weight [V, H]`` and ``bias [V]`` keep only the rows the model's logits keep; ``bias`` is already
    scaled, ``inputs`` scales the hidden states.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    scale: float
    softcap: float | None

    def inputs(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden [..., H]`` times the model's logit scale (``hidden`` itself when the scale is 1)."""
        return hidden if self.scale == 1.0 else hidden * self.scale


def logit_head(model) -> LogitHead:
    """``model``'s lm_head with the transform of its config (a peft wrapper is looked through)."""
    transform = logit_transform(unwrap_peft(model).config)
    head = lm_head_of(model)
    rows = slice(None, transform.vocab)
    bias = None if head.bias is None else head.bias[rows]
    if bias is not None and transform.scale != 1.0:
        bias = bias * transform.scale
    return LogitHead(head.weight[rows], bias, transform.scale, transform.softcap)


def fused_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """fp32 ``[B, T, V]`` logits the way the fused path defines them (``LogitHead``); for checks only."""
    head = logit_head(model)
    logits = head.inputs(final_hidden(model, input_ids, attention_mask)).float() @ head.weight.float().T
    if head.bias is not None:
        logits = logits + head.bias.float()
    return apply_softcap(logits, head.softcap)


@torch.no_grad()
def check_fused_logits(model, name: str, key: str = "base_model") -> None:
    """Refuse ``model`` unless the fused path reproduces its own forward's logits on a few tokens.

    Run once on the loaded model (``PROBE_TOKENS`` tokens on its device): a model that transforms its
    logits in a way ``TRANSFORM_KEYS`` does not describe would otherwise train another objective than
    the one it samples from. The bound is relative to the largest logit, loose enough for bf16. Both
    forwards run in eval mode (no dropout) and, on the CPU, with eager attention (flash-attention kernels
    need CUDA tensors; the attention is the same in both paths, the check is of the head); the model's
    mode and attention are restored.
    """
    weight = lm_head_of(model).weight
    ids = torch.arange(PROBE_TOKENS, device=weight.device)[None] % weight.shape[0]
    mask = torch.ones_like(ids)
    training, attention = model.training, unwrap_peft(model).config._attn_implementation
    swap = weight.device.type == "cpu" and attention not in (None, "eager", "sdpa")  # sdpa runs on the CPU
    model.eval()
    if swap:
        unwrap_peft(model).set_attn_implementation("eager")
    try:
        theirs = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        ours = fused_logits(model, ids, mask)
    finally:
        model.train(training)
        if swap:
            unwrap_peft(model).set_attn_implementation(attention)
    tolerance = PROBE_TOLERANCE.get(weight.dtype, 3e-2) * max(1.0, float(theirs.abs().max()))
    error = float((ours - theirs).abs().max()) if ours.shape == theirs.shape else math.inf
    if not error <= tolerance:
        raise ValueError(
            f"{key}: {name} ({type(unwrap_peft(model)).__name__}) computes logits the fused loss path cannot "
            f"reproduce: lm_head of the last hidden state with {logit_transform(unwrap_peft(model).config)} gives "
            f"logits {list(ours.shape)} off by {error:.3g} (allowed {tolerance:.3g}) from the model's own "
            f"{list(theirs.shape)}; its forward transforms them in a way fusedrl does not know, so it is not supported"
        )
