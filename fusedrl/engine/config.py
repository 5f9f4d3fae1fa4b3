"""Training configuration: typed dataclass, YAML loading, aliases, overrides and validation.

The YAML reads like an axolotl config (``rl: dpo``, ``base_model:``, ``datasets:``)
with TRL's hyperparameter names. Every error names the key; a typo names the
closest valid key. Validation runs before any model is loaded.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..kernels.losses import DPO_LOSS_TYPES, GRPO_LOSS_TYPES, KTO_LOSS_TYPES
from ..kernels.losses.dpo import F_DIVERGENCE_TYPES, LOG_RATIO_LOSS_TYPES, SMOOTHED_LOSS_TYPES
from ..kernels.losses.grpo import (IMPORTANCE_SAMPLING_LEVELS, MULTI_OBJECTIVE_AGGREGATIONS, SCALE_REWARDS,
                                   UNCLIPPED_LOSS_TYPES, check_importance_sampling_level)
from ..kernels.losses.preference import CPO_LOSS_TYPES
from ..kernels.losses.policy import KL_ESTIMATORS
from ..kernels.losses.rloo import reward_clip_bounds
from .data.loading import looks_local
from .rewards import DEFAULT_FORMAT_PATTERN

OFFLINE_ALGORITHMS = ("sft", "dpo", "ipo", "cpo", "simpo", "orpo", "kto", "rm", "prm", "kd")
ONLINE_ALGORITHMS = ("ppo", "grpo", "rloo", "online_dpo")

# axolotl / seed-doc spellings that mean one of our keys.
ALIASES = {
    "rl_beta": "beta",
    "orpo_alpha": "beta",
    "kto_desirable_weight": "desirable_weight",
    "kto_undesirable_weight": "undesirable_weight",
    "lr": "learning_rate",
    "batch_size": "micro_batch_size",
    "epochs": "num_epochs",
    "sft_label_smoothing": "label_smoothing",
    "lmbda": "kd_on_policy_ratio",  # TRL's GKDConfig
    "seq_kd": "kd_teacher_replies",  # TRL's GKDConfig
}

# Algorithms that compare the policy with a reference model (GRPO and RLOO only with beta > 0).
REFERENCE_ALGORITHMS = ("dpo", "ipo", "kto", "grpo", "rloo", "ppo", "online_dpo")
# Online algorithms that sample groups of completions per prompt and may turn the reference off with beta: 0.
GROUP_ALGORITHMS = ("grpo", "rloo")
# Keys that only some algorithms read (see _check_keys_read); label_smoothing has its own rule.
_GROUP_KEYS = ("num_generations", "num_generations_eval", "epsilon", "epsilon_high", "num_iterations",
               "mask_truncated_completions")
_VESPO_KEYS = ("vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg")
_GRPO_ONLY = ("delta", "importance_sampling_level", "scale_rewards", "multi_objective_aggregation",
              "top_entropy_quantile", "sapo_temperature_pos", "sapo_temperature_neg", *_VESPO_KEYS,
              "off_policy_mask_threshold", "use_bias_correction_kl")
_RLOO_ONLY = ("normalize_advantages", "reward_clip_range")
_PPO_ONLY = ("kl_coef", "kl_estimator", "cliprange", "vf_coef", "cliprange_value", "gamma", "lam", "whiten_rewards",
             "num_ppo_epochs", "num_mini_batches")
_KD_ONLY = ("kd_teacher", "kd_top_k", "kd_temperature", "kd_generation_temperature", "kd_alpha", "kd_ce_alpha",
            "kd_divergence", "kd_beta", "kd_normalize_topk", "kd_on_policy_ratio", "kd_teacher_replies")
# Sampling keys: read by the online algorithms and by KD when it samples (``kd_on_policy_ratio`` > 0 or
# ``kd_teacher_replies``).
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "max_completion_length", "fsdp_gather_for_generation")
KEY_READERS = {
    "beta": ("dpo", "ipo", "cpo", "simpo", "orpo", "kto", "grpo", "rloo", "online_dpo"),
    "z_loss": ("sft",),
    "precompute_ref_log_probs": ("dpo", "ipo"),
    "loss_weights": ("dpo",),
    "use_weighting": ("dpo", "ipo"),
    "ld_alpha": ("dpo", "ipo"),
    "f_divergence_type": ("dpo", "ipo"),
    "sync_ref_model": REFERENCE_ALGORITHMS,
    "rpo_alpha": ("dpo", "ipo"),
    "cpo_alpha": ("cpo", "simpo"),
    "simpo_gamma": ("simpo",),
    "alpha": ("cpo", "simpo"),
    "desirable_weight": ("kto",),
    "undesirable_weight": ("kto",),
    "center_rewards_coefficient": ("rm",),
    "step_separator": ("prm",),
    "train_on_last_step_only": ("prm",),
    **{key: ("kd",) for key in _KD_ONLY},
    **{key: GROUP_ALGORITHMS for key in _GROUP_KEYS},
    **{key: ("grpo",) for key in _GRPO_ONLY},
    **{key: ("rloo",) for key in _RLOO_ONLY},
    **{key: ("ppo",) for key in _PPO_ONLY},
    **{key: (*GROUP_ALGORITHMS, "online_dpo") for key in ("reward_weights", "reward_format_pattern",
                                                           "soft_punish_cache")},
    "missing_eos_penalty": ("ppo", "online_dpo"),
    **{key: (*ONLINE_ALGORITHMS, "kd") for key in SAMPLING_KEYS},
    **{key: ONLINE_ALGORITHMS for key in ("local_rollout_forward_batch_size", "reward_model", "reward_funcs")},
}
# Aliases that name one algorithm's parameter: under another ``rl`` they would set a different meaning.
ALIAS_READERS = {"orpo_alpha": ("orpo",), "kto_desirable_weight": ("kto",), "kto_undesirable_weight": ("kto",),
                 "lmbda": ("kd",), "seq_kd": ("kd",)}

# Attention kernels that read per-sequence ``position_ids`` and keep packed sequences apart.
PACKING_ATTENTION = ("flash_attention_2", "flash_attention_3")

# Per-algorithm default of ``beta`` (losses.md; RLOO: TRL's RLOOConfig); 0.1 elsewhere.
DEFAULT_BETA = {"simpo": 2.0, "grpo": 0.04, "rloo": 0.05}
# Per-algorithm default of ``num_generations`` (TRL's GRPOConfig and RLOOConfig).
DEFAULT_NUM_GENERATIONS = {"grpo": 8, "rloo": 2}
# ``loss_type`` choices and default of the algorithms that have one; the others take none.
LOSS_TYPES = {"dpo": DPO_LOSS_TYPES, "ipo": ("ipo",), "grpo": GRPO_LOSS_TYPES, "online_dpo": ("sigmoid", "ipo"),
              "kto": KTO_LOSS_TYPES, "cpo": CPO_LOSS_TYPES}
DEFAULT_LOSS_TYPE = {"dpo": "sigmoid", "ipo": "ipo", "grpo": "grpo", "online_dpo": "sigmoid", "kto": "kto",
                     "cpo": "sigmoid"}


# A float that YAML 1.1 leaves a string: exponent without a dot (``3e-4``, ``1E5``).
_FLOAT = re.compile(r"[-+]?\d+[eE][-+]?\d+$")


def _choices(*values):
    return {"choices": values}


def _range(low=None, high=None, low_open=False, high_open=False):
    return {"low": low, "high": high, "low_open": low_open, "high_open": high_open}


@dataclass
class TrainConfig:
    """Everything ``fusedrl train`` reads from YAML (see configs/ for examples)."""

    base_model: str
    rl: str = field(default="sft", metadata=_choices(*OFFLINE_ALGORITHMS, *ONLINE_ALGORITHMS))
    gguf_file: str | None = None
    tokenizer: str | None = None
    trust_remote_code: bool = False
    model_dtype: str = field(default="float32", metadata=_choices("float32", "bfloat16", "float16"))
    attn_implementation: str | None = field(
        default=None, metadata=_choices(None, "eager", "sdpa", "flash_attention_2", "flash_attention_3"))
    chat_template: str | None = None

    datasets: list = field(default_factory=list)
    test_datasets: list = field(default_factory=list)
    val_set_size: float = field(default=0.0, metadata=_range(0.0, 0.9))
    max_length: int = field(default=1024, metadata=_range(2))
    max_prompt_length: int | None = field(default=None, metadata=_range(1))
    on_bad_row: str = field(default="error", metadata=_choices("error", "skip"))
    dataset_num_proc: int | None = field(default=None, metadata=_range(1))
    sample_packing: bool = False
    kd_top_k: int | None = field(default=None, metadata=_range(1))
    output_dir: str = "outputs/run"

    adapter: str | None = field(default=None, metadata=_choices(None, "lora"))
    lora_r: int = field(default=16, metadata=_range(1))
    lora_alpha: int = field(default=32, metadata=_range(1))
    lora_dropout: float = field(default=0.0, metadata=_range(0.0, 1.0))
    lora_target_modules: list | str = "all-linear"
    rl_adapter_ref_model: bool = False
    ref_model: str | None = None
    precompute_ref_log_probs: bool = False
    sync_ref_model: bool = False
    ref_model_mixup_alpha: float = field(default=0.6, metadata=_range(0.0, 1.0, low_open=True))
    ref_model_sync_steps: int = field(default=512, metadata=_range(1))

    beta: float | None = None  # range checked per algorithm (GRPO accepts 0)
    loss_type: str | list | None = None  # choices per algorithm (LOSS_TYPES); dpo: also a list (MPO)
    loss_weights: list | None = None
    f_divergence_type: str = field(default="reverse_kl", metadata=_choices(*F_DIVERGENCE_TYPES))
    f_alpha_divergence_coef: float = 1.0
    use_weighting: bool = False
    ld_alpha: float | None = field(default=None, metadata=_range(0.0, 1.0))
    label_smoothing: float = field(default=0.0, metadata=_range(0.0, 1.0))  # < 0.5 unless rl: sft
    rpo_alpha: float | None = field(default=1.0, metadata=_range(0.0))
    cpo_alpha: float = field(default=1.0, metadata=_range(0.0))
    simpo_gamma: float = 1.0
    alpha: float = 0.0
    desirable_weight: float = field(default=1.0, metadata=_range(0.0, low_open=True))
    undesirable_weight: float = field(default=1.0, metadata=_range(0.0, low_open=True))
    center_rewards_coefficient: float = field(default=0.0, metadata=_range(0.0))
    step_separator: str = "\n"
    train_on_last_step_only: bool = False
    kd_teacher: str | None = None
    kd_temperature: float = field(default=1.0, metadata=_range(0.0, low_open=True))
    kd_generation_temperature: float = field(default=1.0, metadata=_range(0.0, low_open=True))
    kd_alpha: float = field(default=1.0, metadata=_range(0.0))
    kd_ce_alpha: float = field(default=0.0, metadata=_range(0.0))
    kd_divergence: str = field(default="forward_kl", metadata=_choices("forward_kl", "reverse_kl", "jsd"))
    kd_beta: float = field(default=0.5, metadata=_range(0.0, 1.0))
    kd_normalize_topk: bool = False
    kd_on_policy_ratio: float = field(default=0.0, metadata=_range(0.0, 1.0))
    kd_teacher_replies: bool = False
    z_loss: float = field(default=0.0, metadata=_range(0.0))

    # Online RL (GRPO and PPO): sampling, rewards, and the update schedule of each rollout.
    num_generations: int | None = field(default=None, metadata=_range(2))
    num_generations_eval: int | None = field(default=None, metadata=_range(2))
    temperature: float = field(default=0.9, metadata=_range(0.0, low_open=True))
    top_p: float = field(default=1.0, metadata=_range(0.0, 1.0, low_open=True))
    top_k: int | None = field(default=None, metadata=_range(0))
    max_completion_length: int = field(default=512, metadata=_range(1))
    epsilon: float = field(default=0.2, metadata=_range(0.0, 1.0, high_open=True))
    epsilon_high: float | None = field(default=None, metadata=_range(0.0))
    delta: float | None = None
    importance_sampling_level: str = field(default="token", metadata=_choices(*IMPORTANCE_SAMPLING_LEVELS))
    scale_rewards: str = field(default="group", metadata=_choices(*SCALE_REWARDS))
    multi_objective_aggregation: str = field(default="sum_then_normalize",
                                             metadata=_choices(*MULTI_OBJECTIVE_AGGREGATIONS))
    num_iterations: int = field(default=1, metadata=_range(1))
    mask_truncated_completions: bool = False
    top_entropy_quantile: float = field(default=1.0, metadata=_range(0.0, 1.0))
    sapo_temperature_pos: float = field(default=1.0, metadata=_range(0.0, low_open=True))
    sapo_temperature_neg: float = field(default=1.05, metadata=_range(0.0, low_open=True))
    vespo_k_pos: float = field(default=2.0, metadata=_range(0.0))
    vespo_lambda_pos: float = field(default=3.0, metadata=_range(0.0))
    vespo_k_neg: float = field(default=3.0, metadata=_range(0.0))
    vespo_lambda_neg: float = field(default=2.0, metadata=_range(0.0))
    off_policy_mask_threshold: float | None = field(default=None, metadata=_range(0.0))
    use_bias_correction_kl: bool = False
    normalize_advantages: bool = False
    reward_clip_range: list | None = None
    reward_funcs: list = field(default_factory=list)
    reward_weights: list | None = None
    reward_model: str | None = None
    reward_format_pattern: str = DEFAULT_FORMAT_PATTERN
    soft_punish_cache: int | None = field(default=None, metadata=_range(1))
    kl_coef: float = field(default=0.05, metadata=_range(0.0))
    kl_estimator: str = field(default="k1", metadata=_choices(*KL_ESTIMATORS))
    cliprange: float = field(default=0.2, metadata=_range(0.0, 1.0, low_open=True, high_open=True))
    vf_coef: float = field(default=0.1, metadata=_range(0.0))
    cliprange_value: float = field(default=0.2, metadata=_range(0.0, low_open=True))
    gamma: float = field(default=1.0, metadata=_range(0.0, 1.0))
    lam: float = field(default=0.95, metadata=_range(0.0, 1.0))
    whiten_rewards: bool = False
    missing_eos_penalty: float | None = field(default=None, metadata=_range(0.0, low_open=True))
    num_ppo_epochs: int = field(default=4, metadata=_range(1))
    num_mini_batches: int = field(default=1, metadata=_range(1))
    num_sample_generations: int = field(default=10, metadata=_range(0))
    local_rollout_forward_batch_size: int = field(default=64, metadata=_range(1))

    micro_batch_size: int = field(default=2, metadata=_range(1))
    eval_batch_size: int | None = field(default=None, metadata=_range(1))
    gradient_accumulation_steps: int = field(default=1, metadata=_range(1))
    num_epochs: float = field(default=1.0, metadata=_range(0.0, low_open=True))
    max_steps: int | None = field(default=None, metadata=_range(1))
    learning_rate: float = field(default=5e-6, metadata=_range(0.0, low_open=True))
    weight_decay: float = field(default=0.0, metadata=_range(0.0))
    adam_beta1: float = field(default=0.9, metadata=_range(0.0, 1.0))
    adam_beta2: float = field(default=0.999, metadata=_range(0.0, 1.0))
    adam_epsilon: float = field(default=1e-8, metadata=_range(0.0, low_open=True))
    lr_scheduler: str = field(default="cosine", metadata=_choices("cosine", "linear", "constant"))
    cosine_min_lr_ratio: float = field(default=0.0, metadata=_range(0.0, 1.0))
    warmup_steps: int = field(default=0, metadata=_range(0))
    warmup_ratio: float = field(default=0.0, metadata=_range(0.0, 1.0))
    max_grad_norm: float | None = field(default=1.0, metadata=_range(0.0))  # 0 or null: no clipping
    bf16: str | bool = field(default="auto", metadata=_choices("auto", True, False))
    gradient_checkpointing: bool = False
    fsdp: bool = False
    fsdp_gather_for_generation: bool = True
    torch_compile: bool = False
    disable_dropout: bool | None = None  # null: true for every algorithm but sft (see effective_disable_dropout)
    seed: int = 42
    kernel_backend: str = field(default="auto", metadata=_choices("auto", "triton", "torch", "eager"))

    logging_steps: int = field(default=1, metadata=_range(1))
    eval_steps: int | None = field(default=None, metadata=_range(0))  # 0 or null: only before and after
    save_steps: int | None = field(default=None, metadata=_range(0))  # 0 or null: no checkpoints
    save_total_limit: int | None = field(default=2, metadata=_range(1))  # null: keep every checkpoint
    resume_from_checkpoint: str | None = None
    overwrite_output_dir: bool = False
    tensorboard: bool = True
    wandb_project: str | None = None
    wandb_entity: str | None = None
    wandb_name: str | None = None
    wandb_mode: str | None = field(default=None, metadata=_choices(None, "online", "offline", "disabled"))
    plot: bool = True
    progress_bar: bool = True

    @property
    def effective_beta(self) -> float:
        """``beta`` or the algorithm's default (2.0 for SimPO, 0.04 for GRPO, 0.05 for RLOO, else 0.1)."""
        return self.beta if self.beta is not None else DEFAULT_BETA.get(self.rl, 0.1)

    @property
    def effective_num_generations(self) -> int | None:
        """``num_generations`` or the algorithm's default (8 for GRPO, 2 for RLOO; None for the others)."""
        return self.num_generations if self.num_generations is not None else DEFAULT_NUM_GENERATIONS.get(self.rl)

    @property
    def dpo_loss_types(self) -> list[str]:
        """``rl: dpo``'s loss types as a list (one, or MPO's several)."""
        loss_type = self.effective_loss_type
        return list(loss_type) if isinstance(loss_type, list) else [loss_type]

    @property
    def effective_loss_type(self) -> str | list | None:
        """``loss_type`` or the algorithm's default (``DEFAULT_LOSS_TYPE``; None for the algorithms without one)."""
        return self.loss_type if self.loss_type is not None else DEFAULT_LOSS_TYPE.get(self.rl)

    @property
    def effective_disable_dropout(self) -> bool:
        """``disable_dropout`` or its default: off for SFT, on for the others (as TRL's DPO, KTO, CPO, ORPO, reward,
        PPO and GKD trainers; TRL's GRPO keeps dropout, we drop it so the policy's logprobs in the loss are
        computed like the old and reference logprobs it is compared with)."""
        return self.disable_dropout if self.disable_dropout is not None else self.rl != "sft"


class ConfigError(ValueError):
    """A config key is unknown, mistyped or out of range."""


def _type_ok(value: Any, annotation: Any) -> bool:
    hint = annotation
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (list, dict):
        return isinstance(value, hint)
    if origin in (list, dict):
        return isinstance(value, origin)
    return isinstance(value, hint)


def _check_field(f: dataclasses.Field, value: Any, hints: dict) -> None:
    if not _type_ok(value, hints[f.name]):
        hint = hints[f.name]
        raise ConfigError(f"{f.name}: expected {getattr(hint, '__name__', hint)}, got {value!r} "
                          f"({type(value).__name__})")
    meta = f.metadata
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{f.name}: expected one of {list(meta['choices'])}, got {value!r}")
    if value is None or isinstance(value, (bool, str, list)):
        return
    low, high = meta.get("low"), meta.get("high")
    if low is not None and (value < low or (meta.get("low_open") and value == low)):
        sign = ">" if meta.get("low_open") else ">="
        raise ConfigError(f"{f.name}: expected a value {sign} {low}, got {value!r}")
    if high is not None and (value > high or (meta.get("high_open") and value == high)):
        sign = "<" if meta.get("high_open") else "<="
        raise ConfigError(f"{f.name}: expected a value {sign} {high}, got {value!r}")


def config_from_dict(raw: dict, source: str = "config") -> TrainConfig:
    """Build and validate a ``TrainConfig`` from a plain dict (aliases resolved, unknown keys rejected)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = ALIASES.get(key, key)
        rl = raw.get("rl", "sft")
        if key in ALIAS_READERS and rl not in ALIAS_READERS[key]:
            raise ConfigError(f"{source}: {key}: an alias for rl in {list(ALIAS_READERS[key])}; for rl={rl} "
                              f"set {name!r} itself")
        if name not in fields:
            close = difflib.get_close_matches(key, list(fields) + list(ALIASES), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{source}: unknown key {key!r}{hint}")
        if name in values and values[name] != value:
            other = next(k for k in raw if k != key and ALIASES.get(k, k) == name)
            raise ConfigError(f"{source}: {other!r} ({raw[other]!r}) and {key!r} ({value!r}) both set {name!r}; "
                              "keep one")
        integer = isinstance(value, int) and not isinstance(value, bool)
        if hints[name] in (float, float | None) and (integer or isinstance(value, str) and _FLOAT.match(value)):
            value = float(value)  # PyYAML reads 3e-4 (no dot) as a string
        try:
            _check_field(fields[name], value, hints)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
        values[name] = value
    if "base_model" not in values:
        raise ConfigError(f"{source}: missing required key 'base_model'")
    if values.get("max_grad_norm") == 0:
        values["max_grad_norm"] = None  # no clipping, as in the HF Trainer
    config = TrainConfig(**values)
    _check_cross_field(config, source)
    return config


def _check_cross_field(config: TrainConfig, source: str) -> None:
    if config.sample_packing and config.attn_implementation not in PACKING_ATTENTION:
        raise ConfigError(
            f"{source}: sample_packing: needs attn_implementation in {list(PACKING_ATTENTION)} (varlen attention "
            f"that keeps packed sequences apart); with {config.attn_implementation!r} they would attend to each other")
    if config.max_prompt_length is not None and config.max_prompt_length >= config.max_length:
        raise ConfigError(
            f"{source}: max_prompt_length ({config.max_prompt_length}) must be < max_length ({config.max_length})"
        )
    if not config.datasets:
        raise ConfigError(f"{source}: datasets: expected at least one dataset entry")
    for key in ("datasets", "test_datasets"):
        for i, entry in enumerate(getattr(config, key)):
            if not isinstance(entry, dict) or "path" not in entry:
                raise ConfigError(f"{source}: {key}[{i}]: expected a mapping with a 'path' key, got {entry!r}")
    kto_baseline = config.rl == "kto" and config.effective_loss_type == "kto"
    if kto_baseline and config.micro_batch_size < 2:
        raise ConfigError(f"{source}: micro_batch_size: KTO needs >= 2 (its KL estimate pairs mismatched rows)")
    if kto_baseline and config.eval_batch_size is not None and config.eval_batch_size < 2:
        raise ConfigError(f"{source}: eval_batch_size: KTO needs >= 2 (its KL estimate pairs mismatched rows)")
    if config.rl != "sft" and config.label_smoothing >= 0.5:
        raise ConfigError(f"{source}: label_smoothing: expected a value in [0, 0.5) for rl={config.rl}, "
                          f"got {config.label_smoothing!r}")
    if config.test_datasets and config.val_set_size:
        raise ConfigError(f"{source}: val_set_size: the held-out set is test_datasets here; set one of the two")
    if config.sample_packing and config.rl not in ("sft", "kd"):
        raise ConfigError(f"{source}: sample_packing: only rl: sft and kd pack sequences, got rl={config.rl}")
    if config.kd_teacher is not None and config.kd_top_k is None:
        for key in ("kd_generation_temperature", "kd_normalize_topk"):
            if getattr(config, key) != _field_defaults()[key]:
                raise ConfigError(f"{source}: {key}: with kd_teacher and kd_top_k null the teacher's full "
                                  f"distribution is read at kd_temperature, not a top-k; remove {key} or set kd_top_k")
    if config.rl == "kd" and config.kd_divergence == "jsd" and not 0 < config.kd_beta < 1:
        raise ConfigError(f"{source}: kd_beta: kd_divergence jsd mixes the two distributions with weight "
                          f"kd_beta, expected a value in (0, 1), got {config.kd_beta!r}")
    if "\\n" in config.step_separator or "\\t" in config.step_separator:
        raise ConfigError(f"{source}: step_separator: {config.step_separator!r} holds a backslash and a letter, "
                          "not a newline or a tab; write it in double quotes (\"\\n\") in YAML, or "
                          "--step_separator '\"\\n\"' on the command line")
    _check_keys_read(config, source)
    if config.sync_ref_model:
        _check_sync_ref_model(config, source)
    if config.rl == "kd":
        _check_sampling_kd(config, source)
    _check_beta_and_loss_type(config, source)
    if config.loss_weights is not None:
        _check_loss_weights(config, source)
    _check_label_smoothing(config, source)
    if config.f_divergence_type != "reverse_kl" and (unread := [t for t in config.dpo_loss_types
                                                                 if t in LOG_RATIO_LOSS_TYPES]):
        raise ConfigError(f"{source}: f_divergence_type: loss_type {unread[0]!r} compares log ratios only (as "
                          f"{list(LOG_RATIO_LOSS_TYPES)} do); use reverse_kl with it, got {config.f_divergence_type!r}")
    if config.rl in ONLINE_ALGORITHMS:
        _check_online(config, source)


def _check_sync_ref_model(config: TrainConfig, source: str) -> None:
    """TR-DPO mixes the policy into a reference that is a model of its own, used live."""
    if config.adapter == "lora":
        raise ConfigError(f"{source}: sync_ref_model: not with adapter: lora (the reference is the base model, or a "
                          f"copy of it, while only the adapters train); train without LoRA to sync the reference")
    if config.precompute_ref_log_probs:
        raise ConfigError(f"{source}: sync_ref_model: precompute_ref_log_probs computes the reference once, before "
                          f"training, so a synced reference would never be read; set one of the two")
    if config.rl in GROUP_ALGORITHMS and config.effective_beta == 0:
        raise ConfigError(f"{source}: sync_ref_model: rl={config.rl} with beta: 0 loads no reference model to sync")


def _check_sampling_kd(config: TrainConfig, source: str) -> None:
    """KD samples replies (on-policy steps, teacher replies) only with a live teacher to score them, on unpacked
    rows, and reads the sampling keys only then."""
    switches = [key for key in ("kd_on_policy_ratio", "kd_teacher_replies") if getattr(config, key)]
    if not switches:
        for key in SAMPLING_KEYS:
            if getattr(config, key) != getattr(TrainConfig, key):
                raise ConfigError(f"{source}: {key}: rl=kd samples only with kd_on_policy_ratio > 0 or "
                                  f"kd_teacher_replies: true (neither is set here), got {getattr(config, key)!r}")
        return
    if config.kd_teacher is None:
        raise ConfigError(f"{source}: {switches[0]}: sampled replies need a live kd_teacher to score them (stored "
                          f"targets cover the data's replies only)")
    if config.sample_packing:
        raise ConfigError(f"{source}: sample_packing: {switches[0]} samples a reply per row and needs unpacked rows; "
                          f"set sample_packing: false")


def _check_beta_and_loss_type(config: TrainConfig, source: str) -> None:
    if config.beta is not None:
        if config.rl in GROUP_ALGORITHMS and config.beta < 0:
            raise ConfigError(f"{source}: beta: expected a value >= 0 (0 loads no reference model), "
                              f"got {config.beta!r}")
        if config.rl not in GROUP_ALGORITHMS and config.beta <= 0:
            raise ConfigError(f"{source}: beta: expected a value > 0, got {config.beta!r}")
    if config.loss_type is None:
        return
    if config.rl not in LOSS_TYPES:
        raise ConfigError(f"{source}: loss_type: rl={config.rl} has no loss types (only {sorted(LOSS_TYPES)} do), "
                          f"got {config.loss_type!r}")
    if isinstance(config.loss_type, list):
        _check_loss_type_list(config, source)
    elif config.loss_type not in LOSS_TYPES[config.rl]:
        raise ConfigError(f"{source}: loss_type: expected one of {list(LOSS_TYPES[config.rl])} for rl={config.rl}, "
                          f"got {config.loss_type!r}")


def _check_loss_type_list(config: TrainConfig, source: str) -> None:
    """DPO's multi-loss form (MPO, TRL's list): distinct DPO loss types, ``sft`` for the chosen NLL (instead of
    ``rpo_alpha``), and one ``loss_weights`` entry per type."""
    types = config.loss_type
    if config.rl != "dpo":
        raise ConfigError(f"{source}: loss_type: a list of loss types (MPO) is for rl=dpo only, got {types!r}")
    choices = [*LOSS_TYPES["dpo"], "sft"]
    bad = [t for t in types if t not in choices]
    if bad or not types or len(set(types)) != len(types) or types == ["sft"]:
        raise ConfigError(f"{source}: loss_type: expected distinct names from {choices} with at least one preference "
                          f"loss, got {types!r}")
    if "sft" in types and config.rpo_alpha:
        raise ConfigError(f"{source}: rpo_alpha: loss_type lists sft, the same chosen NLL term; set rpo_alpha: null "
                          f"and weigh sft in loss_weights")


# Keys read only when a switch has a value: (switch, the value that turns them on, keys).
SWITCHED_KEYS = (
    ("adapter", "lora", ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "rl_adapter_ref_model")),
    ("fsdp", True, ("fsdp_gather_for_generation",)),
    ("lr_scheduler", "cosine", ("cosine_min_lr_ratio",)),
    ("sync_ref_model", True, ("ref_model_mixup_alpha", "ref_model_sync_steps")),
    ("loss_type", "sapo", ("sapo_temperature_pos", "sapo_temperature_neg")),
    ("loss_type", "vespo", _VESPO_KEYS),
    ("multi_objective_aggregation", "sum_then_normalize", ("scale_rewards",)),
    ("f_divergence_type", "alpha_divergence", ("f_alpha_divergence_coef",)),
)


def yaml_text(value) -> str:
    """A config value as YAML spells it: ``null``, ``true``/``false``, numbers, strings and lists as they print,
    a string with a control character (a newline) double-quoted with its escapes (``"\\n"``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and not value.isprintable():
        return json.dumps(value)
    return str(value)


def _field_defaults() -> dict:
    """Every ``TrainConfig`` field's default (``base_model`` has none)."""
    return {f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
            for f in dataclasses.fields(TrainConfig) if f.name != "base_model"}


def _check_keys_read(config: TrainConfig, source: str) -> None:
    """A key that only some algorithms read, set away from its default for another algorithm, is an error
    (it would be silently ignored); so is a key of ``SWITCHED_KEYS`` set while its switch is off."""
    defaults = _field_defaults()
    for switch, on, keys in SWITCHED_KEYS:
        current = getattr(config, switch)
        for key in keys if current != on else ():
            if getattr(config, key) != defaults[key]:
                raise ConfigError(f"{source}: {key}: only read with {switch}: {yaml_text(on)} ({switch} is "
                                  f"{yaml_text(current)} here), got {getattr(config, key)!r}")
    for key, readers in KEY_READERS.items():
        value = getattr(config, key)
        if config.rl not in readers and value != defaults[key]:
            raise ConfigError(f"{source}: {key}: rl={config.rl} does not read it (only rl in {list(readers)} does); "
                              f"remove it or leave the default {defaults[key]!r}, got {value!r}")


def _check_loss_weights(config: TrainConfig, source: str) -> None:
    """One non-negative number per DPO loss type."""
    weights, types = config.loss_weights, config.dpo_loss_types
    if len(weights) != len(types) or not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights):
        raise ConfigError(f"{source}: loss_weights: expected {len(types)} numbers >= 0 (one per loss_type: {types}), "
                          f"got {weights!r}")


def _check_label_smoothing(config: TrainConfig, source: str) -> None:
    """Only the losses that read ``label_smoothing`` accept a nonzero value (it would be silently ignored)."""
    if not config.label_smoothing:
        return
    if config.rl not in ("sft", "dpo", "cpo", "simpo"):
        raise ConfigError(f"{source}: label_smoothing: rl={config.rl} does not use it (sft, dpo, cpo and simpo do); "
                          f"expected 0, got {config.label_smoothing!r}")
    if config.rl == "cpo" and config.effective_loss_type != "sigmoid":
        raise ConfigError(f"{source}: label_smoothing: cpo's loss_type {config.effective_loss_type!r} does not use "
                          f"it (only sigmoid does); expected 0, got {config.label_smoothing!r}")
    if config.rl == "dpo" and (unsmoothed := [t for t in config.dpo_loss_types
                                              if t not in (*SMOOTHED_LOSS_TYPES, "sft")]):
        raise ConfigError(f"{source}: label_smoothing: loss_type {unsmoothed[0]!r} does not use it "
                          f"(only {list(SMOOTHED_LOSS_TYPES)} do); expected 0, got {config.label_smoothing!r}")


def _check_online(config: TrainConfig, source: str) -> None:
    """Cross-field rules of the online algorithms (reward sources, weights, clip ranges, the format regex)."""
    if not all(isinstance(spec, str) and spec for spec in config.reward_funcs):
        raise ConfigError(f"{source}: reward_funcs: expected a list of names or paths, got {config.reward_funcs!r}")
    if config.rl == "ppo" and not config.reward_model:
        raise ConfigError(f"{source}: reward_model: PPO needs a reward model (a folder written by rl: rm)")
    if config.rl == "ppo" and config.reward_funcs:
        raise ConfigError(f"{source}: reward_funcs: PPO scores with reward_model only; use rl: grpo for functions")
    if config.rl in (*GROUP_ALGORITHMS, "online_dpo") and not (config.reward_funcs or config.reward_model):
        raise ConfigError(f"{source}: reward_funcs: rl={config.rl} needs reward functions or a reward_model to "
                          f"score its completions")
    sources = len(config.reward_funcs) + bool(config.reward_model)
    if config.reward_weights is not None:
        if len(config.reward_weights) != sources or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) for w in config.reward_weights):
            raise ConfigError(f"{source}: reward_weights: expected {sources} numbers (one per reward function, "
                              f"then one for reward_model when set), got {config.reward_weights!r}")
    if config.reward_clip_range is not None:
        try:
            reward_clip_bounds(config.reward_clip_range)
        except ValueError as err:
            raise ConfigError(f"{source}: {err}") from None
    epsilon_high = config.epsilon if config.epsilon_high is None else config.epsilon_high
    if config.delta is not None and config.delta <= 1 + epsilon_high:
        raise ConfigError(f"{source}: delta: expected a value > 1 + epsilon_high = {1 + epsilon_high}, "
                          f"got {config.delta!r}")
    loss_type = config.effective_loss_type
    if config.delta is not None and loss_type in UNCLIPPED_LOSS_TYPES:
        raise ConfigError(f"{source}: delta: loss_type {loss_type} has no unclipped importance-weight term to cap; "
                          f"remove delta")
    defaults = _field_defaults()
    for key in ("epsilon", "epsilon_high") if loss_type in ("sapo", "vespo") else ():
        if getattr(config, key) != defaults[key]:
            raise ConfigError(f"{source}: {key}: loss_type {loss_type} has no clip range (its {loss_type}_* keys "
                              f"shape its weight); remove {key}")
    try:
        check_importance_sampling_level(loss_type, config.importance_sampling_level)
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from None
    if config.off_policy_mask_threshold is not None and config.num_iterations == 1:
        raise ConfigError(f"{source}: off_policy_mask_threshold: with num_iterations 1 the policy that sampled the "
                          f"completions is the one trained on them (no drift to mask); set num_iterations > 1")
    if config.use_bias_correction_kl and config.effective_beta == 0:
        raise ConfigError(f"{source}: use_bias_correction_kl: corrects the KL term, which beta 0 turns off")
    if (config.soft_punish_cache is not None) != ("soft_overlong" in config.reward_funcs):
        raise ConfigError(f"{source}: soft_punish_cache: set it with the built-in soft_overlong in reward_funcs and "
                          f"only then (got soft_punish_cache {config.soft_punish_cache!r}, reward_funcs "
                          f"{config.reward_funcs!r})")
    if config.soft_punish_cache is not None and config.soft_punish_cache > config.max_completion_length:
        raise ConfigError(f"{source}: soft_punish_cache: expected a value <= max_completion_length "
                          f"({config.max_completion_length}), got {config.soft_punish_cache!r}")
    try:
        re.compile(config.reward_format_pattern)
    except re.error as err:
        raise ConfigError(f"{source}: reward_format_pattern: not a valid regular expression: {err}") from None


def parse_overrides(args: list[str]) -> dict:
    """``["--beta", "0.2", "--adapter=lora"]`` -> ``{"beta": 0.2, "adapter": "lora"}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"override {arg!r}: expected --key value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise ConfigError(f"override --{key}: missing value")
            value = args[i + 1]
            i += 1
        out[key.replace("-", "_")] = yaml.safe_load(value)
        i += 1
    return out


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read ``path`` with ``yaml.safe_load``, apply ``--key value`` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    raw = _apply_overrides(raw, parse_overrides(overrides or []))
    config = config_from_dict(raw, source=str(path))
    base = path.parent
    for key in ("datasets", "test_datasets"):
        entries = [_resolve_local_path(entry, base) for entry in getattr(config, key)]
        for i, entry in enumerate(entries):
            if not Path(entry["path"]).exists() and looks_local(str(entry["path"])):
                raise ConfigError(f"{path}: {key}[{i}].path: local file or folder not found: {entry['path']!r} "
                                  f"(relative paths are looked up from the working directory and {base})")
        setattr(config, key, entries)
    return config


def _apply_overrides(raw: dict, overrides: dict) -> dict:
    """``raw`` with ``overrides`` on top; an override replaces the YAML's value of its key under any alias."""
    overridden = {ALIASES.get(key, key) for key in overrides}
    kept = {key: value for key, value in raw.items() if ALIASES.get(key, key) not in overridden}
    return {**kept, **overrides}


def _resolve_local_path(entry: dict, base: Path) -> dict:
    """Dataset paths that exist relative to the config file's folder become absolute."""
    candidate = base / str(entry.get("path", ""))
    if candidate.exists() and not Path(entry["path"]).exists():
        return {**entry, "path": str(candidate.resolve())}
    return entry
