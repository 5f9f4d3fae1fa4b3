"""What every algorithm shares: the policy, its tokenizer, the fused loss path and the reference model."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

from ..config import TrainConfig
from ..distributed import Ranks, launched_rank, launched_world_size
from ..logit_head import final_hidden, logit_head, logit_transform, unwrap_peft
from ..models import (adapters_disabled, apply_lora, compile_layers, disable_dropout, enable_activation_checkpointing,
                      frozen_copy, load_causal_lm, load_tokenizer)
from ..sharding import ShardedModels, gather_state, shard, shard_sizes

log = logging.getLogger(__name__)


def as_floats(metrics: dict) -> dict[str, float]:
    """Metric tensors (or numbers) as python floats."""
    return {k: float(v) for k, v in metrics.items()}


def float_metrics(loss: torch.Tensor, metrics: dict) -> dict[str, float]:
    """``loss`` and the metric tensors as python floats, ``loss`` first."""
    return {"loss": loss.item(), **as_floats(metrics)}


class Algorithm:
    """One post-training method. Subclasses set ``data_kind`` and implement ``loss(batch)``.

    ``loss`` returns the scalar to backpropagate and a dict of float metrics with
    the reference sheet's names. The trainer works in rounds: it draws
    ``batches_per_round`` micro-batches from the data stream and takes the optimizer
    updates ``updates(batches)`` returns, each a list of micro-batches whose gradients
    are accumulated. Offline methods make one update of the batches as they come;
    online methods (online.py) sample a rollout and return several updates.
    """

    data_kind = "sft"
    min_batch_rows = 1
    token_mean_loss = False  # True: ``loss`` is a mean over label tokens (weights micro-batches by tokens)
    needs_reference = False
    progress_keys: tuple[str, ...] = ("loss",)
    plot_keys: tuple[str, ...] = ("loss",)
    summary_keys: tuple[str, ...] = ("loss",)
    summed_keys: tuple[str, ...] = ()  # metrics that are counts: summed over a step's micro-batches and ranks

    def __init__(self, config: TrainConfig, device: torch.device):
        self.config, self.device = config, device
        # Models to be sharded wait on the CPU: sharding moves each rank's share to the device, layer by layer.
        # Only rank 0 reads their weights; the others build them on the meta device and get rank 0's values
        # when they are sharded.
        self.will_shard = config.fsdp and launched_world_size() > 1  # the trainer calls ``shard`` then
        self.on_meta = self.will_shard and launched_rank() != 0
        self.load_device = torch.device("meta" if self.on_meta else "cpu") if self.will_shard else device
        self.tokenizer = load_tokenizer(config.tokenizer or config.base_model,
                                        None if config.tokenizer else config.gguf_file, config.trust_remote_code,
                                        key="tokenizer" if config.tokenizer else "base_model")
        self.model = self.build_model().to(self.load_device)
        if config.effective_disable_dropout and (changed := disable_dropout(self.model)):
            log.info("disable_dropout: %d dropout rates of the model set to 0", changed)
            if config.adapter == "lora" and config.lora_dropout:
                log.warning("lora_dropout=%g has no effect: disable_dropout is on for rl=%s (set disable_dropout: "
                            "false to keep it)", config.lora_dropout, config.rl)
        self.reference = self._build_reference() if self.needs_reference else None
        self.sharded: ShardedModels | None = None

    @property
    def policy(self):
        """The causal LM that is trained and sampled from (``model`` unless the trainable module holds more)."""
        return self.model

    @property
    def softcap(self) -> float | None:
        """The policy's final logit softcapping (``LogitHead.softcap``), which every fused loss call passes on."""
        return logit_transform(unwrap_peft(self.policy).config).softcap

    @property
    def batches_per_round(self) -> int:
        """Data-stream micro-batches per round: those of one optimizer step (``gradient_accumulation_steps``)."""
        return self.config.gradient_accumulation_steps

    @property
    def updates_per_round(self) -> int:
        """Optimizer updates ``updates`` makes of one round."""
        return 1

    def build_model(self):
        """The trainable model: the base causal LM, wrapped in LoRA when ``adapter: lora``."""
        cfg = self.config
        model = load_causal_lm(cfg.base_model, cfg.model_dtype, cfg.gguf_file, cfg.trust_remote_code,
                               cfg.attn_implementation, on_meta=self.on_meta)
        if cfg.adapter == "lora":
            model = apply_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
        return model

    def _build_reference(self):
        cfg = self.config
        if cfg.ref_model:
            ref = self.load_frozen(cfg.ref_model, "ref_model")
            if (softcap := logit_transform(ref.config).softcap) != self.softcap:
                raise ValueError(f"ref_model: {cfg.ref_model} softcaps its logits at {softcap}, base_model "
                                 f"{cfg.base_model} at {self.softcap}; the fused losses take one softcap for both")
            shapes = {name: p.shape for name, p in ref.named_parameters()}
            if cfg.sync_ref_model and shapes != {name: p.shape for name, p in self.policy.named_parameters()}:
                raise ValueError(f"sync_ref_model: ref_model {cfg.ref_model} has other parameters than base_model "
                                 f"{cfg.base_model} (names or shapes); mixing the policy into it needs the same")
            return ref
        if cfg.adapter == "lora" and not cfg.rl_adapter_ref_model:
            return None
        return frozen_copy(self.policy).to(self.load_device)

    def sync_reference(self) -> None:
        """TR-DPO's reference update ``ref <- alpha * policy + (1 - alpha) * ref`` (``ref_model_mixup_alpha``),
        parameter by parameter in the reference's dtype; under FSDP each rank mixes its own shards."""
        if self.sharded is not None:
            self.sharded.reshard()
        policy = dict(self.policy.named_parameters())
        alpha = self.config.ref_model_mixup_alpha
        with torch.no_grad():
            for name, ref in self.reference.named_parameters():
                target, source = (p.to_local() if isinstance(p, DTensor) else p for p in (ref, policy[name]))
                target.lerp_(source.to(target.dtype), alpha)

    def load_frozen(self, name_or_path: str, key: str):
        """A causal LM that is never trained (a reference, a live teacher) from config key ``key``: loaded in
        ``model_dtype`` with the run's attention, frozen, in eval mode, on ``load_device``."""
        cfg = self.config
        model = load_causal_lm(name_or_path, cfg.model_dtype, None, cfg.trust_remote_code, cfg.attn_implementation,
                               key=key, on_meta=self.on_meta)
        return model.requires_grad_(False).eval().to(self.load_device)

    def models(self) -> list[torch.nn.Module]:
        """The modules a run computes with: the trained one and the reference (when it is a separate model);
        ``compile`` and ``shard`` act on these."""
        return [m for m in (self.model, self.reference) if m is not None]

    def compile(self) -> None:
        """``torch.compile`` the decoder layers of ``models()`` (``torch_compile: true``)."""
        log.info("torch_compile: compiling %d decoder layers (the first steps of each new shape take longer)",
                 compile_layers(self.models()))

    def shard(self, ranks: Ranks, compute_dtype: torch.dtype | None = None) -> None:
        """Shard ``models()`` over ``ranks`` (``fsdp: true``; ``compute_dtype``: see ``sharding.shard``)."""
        self.sharded = shard(self.models(), ranks, compute_dtype, from_rank0=True)
        local, whole = shard_sizes(self.sharded)
        log.info("fsdp: %d ranks; each holds %.4g MiB of the %.4g MiB of weights (trained and frozen models), "
                 "and gradients and AdamW moments alike; the weights were read by rank 0 only", ranks.world_size,
                 local / 2**20, whole / 2**20)

    def run(self, fn, *args):
        """``fn(*args)``; under FSDP inside the root's forward, where every sharded weight is reachable.
        The trainer calls ``loss``, ``updates`` and ``evaluation_batches`` through it."""
        return self.sharded(fn, *args) if self.sharded is not None else fn(*args)

    def whole_model(self, ranks: Ranks):
        """The trained module with whole weights on the main rank (None on the others): ``model`` itself, or
        under FSDP a CPU copy from ``build_model`` loaded with the gathered shards (every rank must call it)."""
        if self.sharded is None:
            return self.model if ranks.is_main else None
        state = gather_state(self.model, keep=ranks.is_main)
        if not ranks.is_main:
            return None
        model = self.build_model()
        model.load_state_dict(state)
        return model

    def to_device(self, batch: dict) -> dict:
        """Move the batch's tensors to the training device (other values pass through)."""
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def evaluation_batches(self, batch: dict) -> list[dict]:
        """The micro-batches that evaluate a held-out ``batch`` (online: its rollout, each row once)."""
        return self.updates([batch])[0]

    def batch_rows(self, batch: dict) -> int:
        """Examples in a batch (pairs count once)."""
        return int(batch["input_ids"].shape[0])

    def batch_weight(self, batch: dict) -> float:
        """How much a micro-batch's mean loss counts in its step's mean: its label tokens for a token-mean
        loss (``token_mean_loss``), else its rows; the step's loss then does not depend on how it is split."""
        if self.token_mean_loss:
            return float((batch["labels"] != -100).sum())
        return float(self.batch_rows(batch))

    def head(self, model=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """lm_head weight ``[V, H]`` and bias ``[V]`` (or None) of ``model`` (the policy), as ``LogitHead``
        gives them; with ``hidden`` and ``softcap`` they are the model's logits."""
        head = logit_head(model if model is not None else self.policy)
        return head.weight, head.bias

    def hidden(self, batch: dict, prefix: str = "", model=None) -> torch.Tensor:
        """Final hidden states ``[B, T, H]`` of ``batch[prefix + "input_ids"]``, times the model's logit scale."""
        model = model if model is not None else self.policy
        return logit_head(model).inputs(final_hidden(model, batch[prefix + "input_ids"],
                                                     batch[prefix + "attention_mask"],
                                                     batch.get(prefix + "position_ids")))

    def reference_forward(self, batch: dict, prefix: str = "") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(hidden, lm_head weight, bias) of the reference model, without grad.

        The reference is a frozen copy, a separate ``ref_model``, or (LoRA without
        ``rl_adapter_ref_model``) the policy with its adapters disabled.
        """
        with torch.no_grad():
            if self.reference is not None:
                return (self.hidden(batch, prefix, self.reference), *self.head(self.reference))
            with adapters_disabled(self.policy):
                return (self.hidden(batch, prefix), *self.head())

    def prepare_data(self, data):
        """Hook on the tokenised ``TrainingData`` before training, once the models are prepared (on their
        device, compiled, sharded): e.g. precomputed reference logps."""
        return data

    def updates(self, batches: list[dict]) -> list[list[dict]]:
        """The optimizer updates of one round of device batches, each a list of micro-batches for ``loss``.

        Offline: one update over the batches as they are.
        """
        return [batches]

    def text_samples(self) -> list[tuple[str, str]]:
        """``(name, text)`` samples for the training log (online methods: their latest completions)."""
        return []

    def state(self) -> dict:
        """JSON state a resumed run needs besides weights, optimizer and data position (none here)."""
        return {}

    def restore(self, state: dict) -> None:
        """Take back what ``state`` returned."""

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in the backward (non-reentrant)."""
        target = self.policy.get_base_model() if hasattr(self.policy, "get_base_model") else self.policy
        enable_activation_checkpointing(target)
        if hasattr(self.policy, "enable_input_require_grads"):
            self.policy.enable_input_require_grads()

    def save_final(self, folder: Path, model) -> None:
        """Save ``model`` (``whole_model``'s trained policy) in Hugging Face format (LoRA: the adapter, plus the
        merged model); merging changes ``model``, so this is the run's last use of it."""
        folder.mkdir(parents=True, exist_ok=True)
        if hasattr(model, "merge_and_unload"):
            model.save_pretrained(str(folder / "adapter"), safe_serialization=True)
            model.merge_and_unload().save_pretrained(str(folder), safe_serialization=True)
        else:
            model.save_pretrained(str(folder), safe_serialization=True)
        self.tokenizer.save_pretrained(str(folder))
