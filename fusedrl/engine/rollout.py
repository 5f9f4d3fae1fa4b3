"""Rollouts: sample completions for prompt batches, behind an interface a faster engine can replace.

A ``Generator`` turns left-padded prompt ids into a ``Rollout``; the algorithms only
see the ``Rollout``. ``HFGenerator`` samples with Hugging Face ``generate`` on the
live policy (KV cache, batched, left padding). Another engine (vLLM, SGLang) would
implement the same ``generate`` and sync the policy's weights before sampling.

``Rollout.sequences()`` builds the training view: prompt + completion with the
labels shifted once (position t holds token t + 1 when it is a completion token,
else -100), the same convention as every data batch (data/collate.py).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .data import IGNORE_INDEX, shift_labels
from .data.collate import pad


@dataclass
class Rollout:
    """Sampled completions of ``N`` rows; rows ``[g*G, (g+1)*G)`` share prompt ``g`` (G = num_generations).

    - ``prompt_ids`` / ``prompt_mask``: ``[N, P]`` LEFT padded (mask 1 on real tokens).
    - ``completion_ids``: ``[N, C]`` RIGHT padded with the pad id after the first EOS.
    - ``completion_mask``: ``[N, C]`` bool, True up to and including the first EOS.
    - ``truncated``: ``[N]`` bool, True when no EOS came within ``max_completion_length`` tokens.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    truncated: torch.Tensor

    @property
    def rows(self) -> int:
        """N, the number of completions."""
        return int(self.completion_ids.shape[0])

    @property
    def completion_lengths(self) -> torch.Tensor:
        """``[N]`` int64: completion tokens per row (EOS included)."""
        return self.completion_mask.sum(-1)

    def length_metrics(self, prefix: str = "completions") -> dict[str, torch.Tensor]:
        """``<prefix>/mean_length`` (tokens, EOS included) and ``<prefix>/clipped_ratio`` (rows with no EOS)."""
        return {f"{prefix}/mean_length": self.completion_lengths.float().mean(),
                f"{prefix}/clipped_ratio": self.truncated.float().mean()}

    def sequences(self) -> dict[str, torch.Tensor]:
        """Training tensors ``[N, P + C]``: ``input_ids``, ``attention_mask``, ``position_ids``, ``labels``.

        ``position_ids`` count real tokens only, so a left-padded row sees the
        positions it would have unpadded (as in ``generate``).
        """
        input_ids = torch.cat([self.prompt_ids, self.completion_ids], dim=1)
        attention_mask = torch.cat([self.prompt_mask.long(), self.completion_mask.long()], dim=1)
        trained = torch.cat([torch.zeros_like(self.prompt_mask, dtype=torch.bool), self.completion_mask], dim=1)
        labels = torch.stack([shift_labels(ids, mask) for ids, mask in zip(input_ids, trained)])
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
                "labels": labels}

    @classmethod
    def cat(cls, rollouts: list[Rollout], pad_token_id: int) -> Rollout:
        """One rollout of all rows: prompts re-padded on the left, completions on the right."""
        def rows(name: str) -> list[torch.Tensor]:
            return [row for r in rollouts for row in getattr(r, name)]

        return cls(
            prompt_ids=pad(rows("prompt_ids"), pad_token_id, side="left"),
            prompt_mask=pad(rows("prompt_mask"), 0, side="left"),
            completion_ids=pad(rows("completion_ids"), pad_token_id),
            completion_mask=pad(rows("completion_mask"), False),
            truncated=torch.cat([r.truncated for r in rollouts]),
        )


def completion_masks(completion_ids: torch.Tensor, eos_token_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask [N, C] bool up to and including the first EOS, truncated [N] bool: no EOS)`` of sampled ids."""
    is_eos = torch.isin(completion_ids, torch.tensor(eos_token_ids, device=completion_ids.device))
    eos_before = is_eos.long().cumsum(-1) - is_eos.long()
    return eos_before == 0, ~is_eos.any(-1)


def completion_prompts(input_ids: torch.Tensor, labels: torch.Tensor, pad_token_id: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """What to sample a new last reply from for each row of an SFT batch (``input_ids``, shifted ``labels``
    ``[B, T]``, right padded): the tokens before the row's last completion span, i.e. the prompt and any earlier
    turns (for a chat template, up to and including the assistant header). Returns left-padded ``prompt_ids``
    ``[B, P]`` and ``prompt_mask`` ``[B, P]`` (1 on real tokens)."""
    completion = torch.zeros_like(labels, dtype=torch.bool)
    completion[:, 1:] = labels[:, :-1] != IGNORE_INDEX
    starts = completion.clone()
    starts[:, 1:] &= ~completion[:, :-1]
    positions = torch.arange(labels.shape[1], device=labels.device)
    last_start = torch.where(starts, positions, -1).max(-1).values
    if bool((last_start < 0).any()):
        row = int((last_start < 0).nonzero()[0, 0])
        raise ValueError(f"row {row} of the batch has no completion tokens, so no prompt to sample a reply to")
    prompts = [ids[:start] for ids, start in zip(input_ids, last_start.tolist())]
    return pad(prompts, pad_token_id, side="left"), pad([torch.ones_like(p) for p in prompts], 0, side="left")


@dataclass
class SamplingParams:
    """How completions are sampled: ``temperature`` > 0, ``top_p`` in (0, 1], ``top_k`` (0 or None: off)."""

    temperature: float = 0.9
    top_p: float = 1.0
    top_k: int | None = None
    max_completion_length: int = 512


class Generator:
    """Interface: ``generate(prompt_ids [B, P], prompt_mask [B, P], num_generations) -> Rollout`` (N = B * G)."""

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, num_generations: int) -> Rollout:
        raise NotImplementedError


class HFGenerator(Generator):
    """Sampling with ``model.generate`` on the live policy (no weight sync needed), under ``torch.no_grad``.

    ``synced_gpus``: every rank keeps stepping until all ranks' completions have ended (a sharded policy
    gathers each layer from all ranks, so every rank must run the same number of forwards)."""

    def __init__(self, model, sampling: SamplingParams, eos_token_ids: list[int], pad_token_id: int):
        self.model, self.sampling = model, sampling
        self.eos_token_ids, self.pad_token_id = eos_token_ids, pad_token_id
        self.synced_gpus = False

    def generation_config(self):
        """Every sampling setting given explicitly, so the model's own generation defaults never leak in."""
        from transformers import GenerationConfig

        s = self.sampling
        return GenerationConfig(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or 0,
                                repetition_penalty=1.0, max_new_tokens=s.max_completion_length,
                                eos_token_id=self.eos_token_ids, pad_token_id=self.pad_token_id, use_cache=True)

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, num_generations: int) -> Rollout:
        """Sample ``num_generations`` completions of each left-padded prompt row (``[B, P]`` -> N = B * G rows)."""
        prompt_ids = prompt_ids.repeat_interleave(num_generations, dim=0)
        prompt_mask = prompt_mask.repeat_interleave(num_generations, dim=0)
        with torch.no_grad(), generation_mode(self.model):
            out = self.model.generate(input_ids=prompt_ids, attention_mask=prompt_mask,
                                      generation_config=self.generation_config(), synced_gpus=self.synced_gpus)
        completion_ids = out[:, prompt_ids.shape[1]:]
        mask, truncated = completion_masks(completion_ids, self.eos_token_ids)
        completion_ids = torch.where(mask, completion_ids, self.pad_token_id)
        return Rollout(prompt_ids, prompt_mask, completion_ids, mask, truncated)


@contextlib.contextmanager
def generation_mode(model):
    """Eval mode and the KV cache on inside the block (models load with ``use_cache=False``), and compiled
    layers (``torch_compile``) run eagerly, as each new token is a new shape; restored after."""
    config = model.config
    was_training, had_cache = model.training, config.use_cache
    model.eval()
    config.use_cache = True
    try:
        with torch.compiler.set_stance("force_eager"):
            yield model
    finally:
        config.use_cache = had_cache
        model.train(was_training)
