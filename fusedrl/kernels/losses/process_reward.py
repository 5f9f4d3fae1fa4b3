"""The process reward model's loss: a binary cross-entropy of each labelled step's score."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_same_shape


def process_reward_loss(scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor):
    """``-[y logσ(s) + (1 − y) logσ(−s)]`` averaged over the steps in ``mask`` (0 when there is none).

    ``s`` is a step's score, a logit read at the step's last token; ``y`` is 1 for a correct step, 0 for a wrong
    one. TRL's PRMTrainer trains two token logits with cross-entropy: the same loss of their difference z₁ − z₀.

    Args:
        scores: ``[B, T]`` scores at every token; labels: ``[B, T]``, 0 or 1 where ``mask``; mask: ``[B, T]`` bool,
            the steps trained on.

    Returns:
        ``(loss, accuracy)``: the fp32 scalar loss and the share of masked steps whose score has the label's sign
        (``s > 0`` for correct; detached, 0 when there is no step).
    """
    check_same_shape("scores", scores, labels=labels, mask=mask)
    if mask.dtype != torch.bool:
        raise ValueError(f"mask: expected a bool tensor, got {mask.dtype}")
    step_scores, step_labels = scores.float()[mask], labels[mask].float()
    if not ((step_labels == 0) | (step_labels == 1)).all():
        raise ValueError("labels: expected 0 or 1 at every step in mask")
    steps = max(1, step_labels.numel())
    loss = F.binary_cross_entropy_with_logits(step_scores, step_labels, reduction="sum") / steps
    accuracy = ((step_scores > 0).float() == step_labels).sum() / steps
    return loss, accuracy.detach()
