"""The fused SFT loss inside a Hugging Face causal LM, for training loops fusedrl does not own.

``use_fused_loss(model)`` patches one model instance: a forward with ``labels`` runs the decoder and then
``linear_cross_entropy`` on the last hidden states and the lm_head weight, so the ``[tokens, vocab]`` logits
never exist, and returns ``CausalLMOutputWithPast(loss=..., logits=None)``. It follows transformers' causal-LM
loss: labels shifted once inside (or ``shift_labels`` given already shifted), ``-100`` ignored, the mean over
label tokens, or the sum over ``num_items_in_batch`` when the caller passes it (the HF Trainer does, to weigh
gradient accumulation by tokens). A forward without labels is the model's own (generation, logits).
"""
from __future__ import annotations

import functools

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from .engine.logit_head import check_fused_logits, decoder_of, logit_head, unwrap_peft
from .kernels import linear_cross_entropy

_NOT_FOR_THE_DECODER = ("logits_to_keep", "return_dict", "num_items_in_batch", "shift_labels")


def use_fused_loss(model, backend: str = "auto"):
    """Patch ``model`` (a transformers causal LM, or a peft model around one) in place and return it.

    ``forward(input_ids [B, T], labels [B, T], ...)`` then returns the fp32 loss and ``logits=None``.
    Logits transformed after the lm_head (Gemma-2's softcapping, Cohere's ``logit_scale``, Granite's
    ``logits_scaling``: ``fusedrl.engine.logit_head``) are reproduced; a model whose logits the fused path
    cannot reproduce is refused with ``ValueError``.
    """
    base = unwrap_peft(model)
    check_fused_logits(base, base.name_or_path or "the model passed to use_fused_loss", key="model")
    model_forward = base.forward

    @functools.wraps(model_forward)  # the HF Trainer reads the signature to keep dataset columns
    def forward(*args, labels: torch.Tensor | None = None, **kwargs):
        shift_labels = kwargs.get("shift_labels")
        if labels is None and shift_labels is None:
            return model_forward(*args, **kwargs)
        decoder_kwargs = {k: v for k, v in kwargs.items() if k not in _NOT_FOR_THE_DECODER}
        out = decoder_of(base)(*args, **decoder_kwargs)
        hidden = out.last_hidden_state
        if shift_labels is None:
            hidden, shift_labels = hidden[:, :-1], labels[:, 1:]
        head = logit_head(base)
        num_items = kwargs.get("num_items_in_batch")
        loss = linear_cross_entropy(head.inputs(hidden), head.weight, shift_labels, bias=head.bias,
                                    softcap=head.softcap, backend=backend,
                                    reduction="mean" if num_items is None else "sum")
        if num_items is not None:
            loss = loss / torch.as_tensor(num_items, device=loss.device, dtype=loss.dtype)
        return CausalLMOutputWithPast(loss=loss, logits=None, past_key_values=out.past_key_values,
                                      hidden_states=out.hidden_states, attentions=out.attentions)

    base.forward = forward
    return model
