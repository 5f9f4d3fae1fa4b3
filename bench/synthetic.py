"""Seeded synthetic inputs: hidden states, an lm_head weight and labels with a masked prompt prefix."""
from __future__ import annotations

import torch

from .eager import IGNORE_INDEX

SEED = 0
PROMPT_FRACTION = 0.25


def generator(device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded with ``SEED``, so every implementation sees the same inputs."""
    return torch.Generator(device=device).manual_seed(SEED)


def hidden_states(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, gen: torch.Generator,
                  requires_grad: bool = True) -> torch.Tensor:
    """``shape`` (``[..., H]``) standard-normal hidden states, a grad leaf when ``requires_grad``."""
    return torch.randn(shape, generator=gen, device=device).to(dtype).requires_grad_(requires_grad)


def lm_head(v: int, h: int, dtype: torch.dtype, device: torch.device, gen: torch.Generator,
            requires_grad: bool = True) -> torch.Tensor:
    """``[V, H]`` weight scaled by ``H**-0.5`` so logits have unit variance."""
    weight = torch.randn((v, h), generator=gen, device=device) * h**-0.5
    return weight.to(dtype).requires_grad_(requires_grad)


def labels(rows: int, seq: int, v: int, device: torch.device, gen: torch.Generator,
           prompt_fraction: float = PROMPT_FRACTION) -> torch.Tensor:
    """``[rows, seq]`` int64 token ids, ``-100`` over the first ``prompt_fraction`` of each row (the prompt)."""
    ids = torch.randint(0, v, (rows, seq), generator=gen, device=device)
    ids[:, : int(seq * prompt_fraction)] = IGNORE_INDEX
    return ids


def policy_rows(rows: int, seq: int, h: int, v: int, dtype: torch.dtype, device: torch.device,
                gen: torch.Generator, prompt_fraction: float = PROMPT_FRACTION) -> dict[str, torch.Tensor]:
    """The trained model's side of a batch of ``rows x seq`` tokens: hidden ``[rows, seq, H]`` and weight
    ``[V, H]`` (grad leaves) and labels ``[rows, seq]`` (prompts masked), drawn in that order from ``gen``."""
    return {"hidden": hidden_states((rows, seq, h), dtype, device, gen), "weight": lm_head(v, h, dtype, device, gen),
            "labels": labels(rows, seq, v, device, gen, prompt_fraction)}


def standard_normal(shape: tuple[int, ...], device: torch.device, gen: torch.Generator) -> torch.Tensor:
    """fp32 standard-normal values (advantages, upstream gradients, teacher scores)."""
    return torch.randn(shape, generator=gen, device=device)
