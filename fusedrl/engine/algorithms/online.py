"""What GRPO and PPO share: sampling a rollout, scoring it without grad, and cutting it into update batches.

A round (see ``Algorithm``) hands the algorithm prompt batches; ``sample`` turns them
into one ``Rollout`` plus the training view ``[N, T]`` (T = prompt + completion) and
the text the reward functions read. Token logprobs of the sampled tokens come from
the fused kernel at the sampling temperature, on the concatenated sequence with the
labels shifted once (``Rollout.sequences``), never from full logits.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch

from ...kernels import linear_logprobs
from ..data import pad_token_id
from ..models import RewardModel
from ..rollout import HFGenerator, Rollout, SamplingParams
from ..rewards import call_reward_function, completion_text, load_reward_functions
from ..sharding import gathered
from .base import Algorithm

PROMPT_KEYS = ("prompt_input_ids", "prompt_attention_mask", "prompts")
TEXT_SAMPLES = 8


@dataclass
class Sampled:
    """One round's rollout: ``rollout`` (N rows), its ``sequences`` ``[N, T]`` tensors, and per row the
    ``prompts``, decoded ``completions`` and the dataset's other ``columns`` (each a list of N)."""

    rollout: Rollout
    sequences: dict
    prompts: list
    completions: list
    columns: dict


def select_rows(tensors: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows ``index`` of ``[N, T]`` and ``[N]`` tensors; columns that are padding in every picked row are cut."""
    picked = {k: v[index] for k, v in tensors.items()}
    width = tensors["attention_mask"].shape[1]
    used = picked["attention_mask"].bool().any(0).nonzero()[:, 0]
    lo, hi = int(used.min()), int(used.max()) + 1
    return {k: v[:, lo:hi] if v.dim() == 2 and v.shape[1] == width else v for k, v in picked.items()}


def prompt_text(prompt) -> str:
    """A prompt for the log: the text, or one ``role: content`` line per message."""
    if isinstance(prompt, list):
        return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in prompt)
    return str(prompt)


class OnlineAlgorithm(Algorithm):
    """Base of the online methods: the generator on the live policy, frozen scorers, and rollout helpers."""

    data_kind = "prompt"
    num_generations = 1
    samples_completions = True  # False: no generator (KD without on-policy steps)

    def __init__(self, config, device):
        super().__init__(config, device)
        self.pad_token_id = pad_token_id(self.tokenizer)
        sampling = SamplingParams(config.temperature, config.top_p, config.top_k, config.max_completion_length)
        self.generator = (HFGenerator(self.policy, sampling, self.eos_token_ids(), self.pad_token_id)
                          if self.samples_completions else None)
        self.reward_model = self.load_reward_model() if config.reward_model else None
        self.reward_functions = load_reward_functions(config.reward_funcs, format_pattern=config.reward_format_pattern,
                                                      max_completion_length=config.max_completion_length,
                                                      soft_punish_cache=config.soft_punish_cache)
        self.latest: list[tuple[str, str, str]] = []

    def models(self) -> list[torch.nn.Module]:
        """The trained module, the reference and the frozen reward model (when there is one)."""
        return super().models() + ([self.reward_model] if self.reward_model is not None else [])

    def shard(self, ranks, compute_dtype=None) -> None:
        """Shard as ``Algorithm.shard``; sampling then steps in lockstep on every rank, with the policy gathered
        whole (``gathered``) unless ``fsdp_gather_for_generation`` is off."""
        super().shard(ranks, compute_dtype)
        if self.generator is not None:
            self.generator.synced_gpus = True

    def eos_token_ids(self) -> list[int]:
        """Ids that end a completion: the tokenizer's EOS and the model's generation-config EOS ids."""
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(getattr(self.policy, "generation_config", None), "eos_token_id", None)
        ids.update(configured if isinstance(configured, list) else [configured])
        ids.discard(None)
        if not ids:
            raise ValueError("tokenizer: expected an eos token to end completions with")
        return sorted(ids)

    def load_reward_model(self, trainable: bool = False) -> RewardModel:
        """``reward_model`` as a ``RewardModel`` (frozen, in eval mode and on ``load_device`` unless
        ``trainable``: then on the CPU, as ``build_model`` returns it), same tokenizer."""
        cfg = self.config
        try:
            model = RewardModel.from_pretrained(cfg.reward_model, cfg.model_dtype, None, cfg.trust_remote_code,
                                                cfg.attn_implementation, on_meta=self.on_meta)
        except ValueError as err:
            raise ValueError(f"{err} (reward_model is a folder written by rl: rm, e.g. outputs/rm/final after "
                             "configs/rm.yaml)") from None
        if trainable:
            return model
        return model.eval().requires_grad_(False).to(self.load_device)

    def batch_rows(self, batch: dict) -> int:
        """Rows of an update micro-batch (completions) or of a prompt batch (prompts)."""
        return int(batch["input_ids" if "input_ids" in batch else "prompt_input_ids"].shape[0])

    def sample(self, batches: list[dict], generator: HFGenerator | None = None) -> Sampled:
        """Generate ``num_generations`` completions per prompt of every batch with ``generator`` (default: the
        policy's) and decode them."""
        g = self.num_generations
        generator = generator or self.generator
        gather = self.sharded is not None and self.config.fsdp_gather_for_generation
        with gathered(generator.model) if gather else contextlib.nullcontext():
            rollout = Rollout.cat([generator.generate(b["prompt_input_ids"], b["prompt_attention_mask"], g)
                                   for b in batches], self.pad_token_id)
        prompts = [p for b in batches for p in b["prompts"] for _ in range(g)]
        columns = {k: [v for b in batches for v in b[k] for _ in range(g)] for k in batches[0] if k not in PROMPT_KEYS}
        ids = [row[mask].tolist() for row, mask in zip(rollout.completion_ids, rollout.completion_mask)]
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        completions = [[{"role": "assistant", "content": t}] if isinstance(p, list) else t
                       for p, t in zip(prompts, texts)]
        columns["completion_ids"] = ids
        return Sampled(rollout, rollout.sequences(), prompts, completions, columns)

    def _chunks(self, sequences: dict) -> list[dict]:
        size = self.config.local_rollout_forward_batch_size
        rows = sequences["input_ids"].shape[0]
        return [{k: v[start:start + size] for k, v in sequences.items()} for start in range(0, rows, size)]

    def _logps(self, hidden: torch.Tensor, weight: torch.Tensor, bias, labels: torch.Tensor) -> torch.Tensor:
        return linear_logprobs(hidden, weight, labels, bias=bias, temperature=self.config.temperature,
                               softcap=self.softcap, backend=self.config.kernel_backend)

    @torch.no_grad()
    def policy_logps(self, sequences: dict) -> torch.Tensor:
        """``[N, T]`` logprobs of the sampled tokens under the current (sampling) policy, 0 off the labels."""
        return torch.cat([self._logps(self.hidden(c), *self.head(), c["labels"]) for c in self._chunks(sequences)])

    @torch.no_grad()
    def reference_logps(self, sequences: dict) -> torch.Tensor:
        """``[N, T]`` logprobs of the sampled tokens under the reference model, 0 off the labels."""
        return torch.cat([self._logps(*self.reference_forward(c), c["labels"]) for c in self._chunks(sequences)])

    @torch.no_grad()
    def token_values(self, model: RewardModel, sequences: dict) -> torch.Tensor:
        """``[N, T]`` fp32 values of ``model`` at every position (position t: the state before token t + 1)."""
        return torch.cat([model.token_values(c["input_ids"], c["attention_mask"], c["position_ids"])
                          for c in self._chunks(sequences)])

    def reward_model_scores(self, sequences: dict) -> torch.Tensor:
        """``[N]`` reward-model scores of prompt + completion, read at each row's last real token."""
        values = self.token_values(self.reward_model, sequences)
        positions = torch.arange(values.shape[1], device=values.device)
        last = torch.where(sequences["attention_mask"].bool(), positions, -1).max(-1).values
        return values.gather(1, last[:, None]).squeeze(1)

    def rewards(self, sampled: Sampled) -> dict:
        """Per-source rewards of the rollout: each reward function's list (None allowed), then ``reward_model``."""
        out = {f.name: call_reward_function(f, sampled.prompts, sampled.completions, sampled.columns)
               for f in self.reward_functions}
        if self.reward_model is not None:
            out["reward_model"] = self.reward_model_scores(sampled.sequences)
        return out

    def eos_penalised(self, scores: torch.Tensor, rollout: Rollout) -> torch.Tensor:
        """``[N]`` scores less ``missing_eos_penalty`` (when set) for each completion cut without an EOS."""
        penalty = self.config.missing_eos_penalty
        return scores if penalty is None else scores - penalty * rollout.truncated.float()

    def remember(self, sampled: Sampled, note: Callable[[int], str]) -> None:
        """Keep the first rows of the latest training rollout: prompt, completion and ``note(row)`` (what it
        scored); evaluation rollouts (model in eval mode) are not logged as training samples."""
        if not self.model.training:
            return
        rows = min(TEXT_SAMPLES, len(sampled.completions))
        self.latest = [(prompt_text(sampled.prompts[i]), completion_text(sampled.completions[i]), note(i))
                       for i in range(rows)]

    def text_samples(self) -> list[tuple[str, str]]:
        """The latest rollout's first rows as one markdown text."""
        if not self.latest:
            return []
        parts = [f"**prompt**: {p}\n\n**completion**: {c}\n\n{n}" for p, c, n in self.latest]
        return [("completions", "\n\n---\n\n".join(parts))]

    def state(self) -> dict:
        """The latest rollout's logged rows, so a run resumed inside a round logs the same samples."""
        return {"latest": self.latest}

    def restore(self, state: dict) -> None:
        self.latest = [tuple(row) for row in state.get("latest", [])]
