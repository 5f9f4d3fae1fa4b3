"""A trained process reward model's verdict on each step of a reply, tokenised exactly as ``rl: prm`` trains."""
from __future__ import annotations

import torch

from .data.tokenize import Encoder
from .models import RewardModel


@torch.no_grad()
def step_scores(model: RewardModel, tokenizer, prompt, steps: list[str], step_separator: str = "\n",
                chat_template: str | None = None) -> torch.Tensor:
    """The probability that each step is correct, ``[len(steps)]`` fp32: the sigmoid of ``model``'s score at the
    step's last token, with ``prompt`` (text or messages) and ``steps`` laid out as in training
    (``Encoder.steps``; ``step_separator`` and ``chat_template`` as the run's config had them)."""
    ids, _, ends = Encoder(tokenizer, chat_template).steps(prompt, steps, step_separator)
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    scores = model.token_values(input_ids, torch.ones_like(input_ids))
    return torch.sigmoid(scores[0, ends])
