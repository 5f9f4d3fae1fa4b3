"""Post-training losses on small tensors (sequence / token / top-k logprobs) and one-call fused wrappers.

The loss math never sees the vocabulary: it runs on ``[B]``, ``[B, T]`` or ``[N, K]``
tensors. The ``fused_linear_*`` wrappers go from hidden states and the lm_head
weight to the loss through ``linear_logprobs`` without a ``[tokens, vocab]`` tensor.
"""
from .distill import DIVERGENCES, teacher_logprobs, topk_kd_loss
from .dpo import DPO_LOSS_TYPES, dpo_loss
from .fused_distill import fused_linear_kd_loss, fused_linear_topk_kd_loss
from .fused_policy import fused_linear_grpo_loss, fused_linear_ppo_loss, fused_linear_rloo_loss
from .fused_preference import (
    fused_linear_cpo_loss,
    fused_linear_dpo_loss,
    fused_linear_kto_loss,
    fused_linear_orpo_loss,
    fused_linear_simpo_loss,
)
from .grpo import GRPO_LOSS_TYPES, grpo_advantages, grpo_loss
from .kto import KTO_LOSS_TYPES, check_kto_balance, kto_loss, kto_metrics
from .policy import gae_advantages, ppo_policy_loss, ppo_rewards, ppo_value_loss, token_kl
from .preference import alphapo_rewards, cpo_loss, orpo_loss, preference_metrics, reward_model_loss, simpo_loss
from .process_reward import process_reward_loss
from .rloo import rloo_advantages, rloo_loss
from .sequence import (
    RunningMean,
    completion_lengths,
    completion_mask,
    masked_mean,
    masked_sum,
    masked_whiten,
    sequence_logps,
    token_mean_nll,
)

__all__ = [
    "DIVERGENCES", "DPO_LOSS_TYPES", "GRPO_LOSS_TYPES", "KTO_LOSS_TYPES", "RunningMean", "alphapo_rewards",
    "check_kto_balance", "completion_lengths", "completion_mask", "cpo_loss", "dpo_loss",
    "fused_linear_cpo_loss", "fused_linear_dpo_loss", "fused_linear_grpo_loss", "fused_linear_kd_loss",
    "fused_linear_kto_loss",
    "fused_linear_orpo_loss", "fused_linear_ppo_loss", "fused_linear_rloo_loss", "fused_linear_simpo_loss",
    "fused_linear_topk_kd_loss",
    "gae_advantages", "grpo_advantages", "grpo_loss", "kto_loss", "kto_metrics", "masked_mean", "masked_sum",
    "masked_whiten", "orpo_loss", "ppo_policy_loss", "ppo_rewards", "ppo_value_loss", "preference_metrics",
    "process_reward_loss",
    "reward_model_loss", "rloo_advantages", "rloo_loss", "sequence_logps", "simpo_loss", "teacher_logprobs",
    "token_kl", "token_mean_nll",
    "topk_kd_loss",
]
