"""Registry of the algorithms behind ``rl:``."""
from __future__ import annotations

import torch

from ..config import TrainConfig
from .base import Algorithm
from .distill import KD
from .grpo import GRPO
from .kto import KTO
from .online_dpo import OnlineDPO
from .ppo import PPO
from .preference import CPO, DPO, ORPO, SimPO
from .process_reward import ProcessRewardModelling
from .reward_model import RewardModelling
from .rloo import RLOO
from .sft import SFT

ALGORITHMS: dict[str, type[Algorithm]] = {
    "sft": SFT, "dpo": DPO, "ipo": DPO, "cpo": CPO, "simpo": SimPO, "orpo": ORPO, "kto": KTO,
    "rm": RewardModelling, "prm": ProcessRewardModelling, "kd": KD, "grpo": GRPO, "rloo": RLOO, "ppo": PPO,
    "online_dpo": OnlineDPO,
}


def algorithm_class(rl: str) -> type[Algorithm]:
    """The class implementing ``rl``."""
    return ALGORITHMS[rl]


def build_algorithm(config: TrainConfig, device: torch.device) -> Algorithm:
    """Load the models ``config.rl`` needs and return its algorithm object."""
    return algorithm_class(config.rl)(config, device)
