"""Knowledge distillation from top-k teacher logprobs (``rl: kd``): stored by ``fusedrl kd-extract``, or
computed in each step from a live teacher (``kd_teacher``), on the data's completions, on completions the
teacher samples (``kd_teacher_replies``, sequence-level KD) or, for a ``kd_on_policy_ratio`` share of the
steps, on completions the student samples itself (GKD)."""
from __future__ import annotations

import random

import torch

from ...kernels.losses import fused_linear_kd_loss, fused_linear_topk_kd_loss
from ..distributed import Ranks
from ..kd_extract import read_metadata, teacher_topk, vocab_fingerprint
from ..logit_head import logit_head
from ..models import load_tokenizer
from ..rollout import HFGenerator, completion_prompts
from .base import as_floats, float_metrics
from .online import OnlineAlgorithm, select_rows


class KD(OnlineAlgorithm):
    """``kd_alpha * T^2 * KD + kd_ce_alpha * CE`` over positions with teacher targets.

    With ``kd_teacher`` the data is plain SFT rows and each batch gets the teacher's top-``kd_top_k`` of
    every completion position at ``kd_generation_temperature`` (what ``kd-extract`` would have stored), or,
    with ``kd_top_k`` null, the divergence over the whole vocabulary from the teacher's own logits at
    ``kd_temperature`` (``linear_distill_divergence``; neither model's logits are materialised).

    On-policy distillation (GKD, Agarwal et al. 2024; TRL's ``lmbda``): each optimizer step is on-policy with
    probability ``kd_on_policy_ratio``, drawn from ``seed`` and the step's number (every rank draws alike). An
    on-policy step replaces the last reply of every row by one the student samples from what precedes it
    (``temperature``, ``top_p``, ``top_k``, ``max_completion_length``) and distils the teacher's top-k on those
    tokens. With ``kd_teacher_replies`` (TRL's ``seq_kd``) the other steps train on replies the teacher samples
    instead of the data's, the ``kd_ce_alpha`` term included (sequence-level KD). Evaluation always uses the
    data's replies, so its metrics compare across steps and settings."""

    token_mean_loss = True
    progress_keys = ("loss", "kd_loss")
    plot_keys = ("loss", "kd_loss", "ce_loss", "on_policy", "completions/mean_length",
                 "teacher_completions/mean_length")
    summary_keys = ("loss", "kd_loss", "ce_loss")

    def __init__(self, config, device):
        super().__init__(config, device)
        self.teacher = self._build_teacher() if config.kd_teacher else None
        self.teacher_generator = (HFGenerator(self.teacher, self.generator.sampling, self.generator.eos_token_ids,
                                              self.pad_token_id) if config.kd_teacher_replies else None)
        self.rounds = 0  # optimizer steps drawn so far: on-policy or not

    @property
    def data_kind(self) -> str:
        return "sft" if self.config.kd_teacher else "kd"

    @property
    def samples_completions(self) -> bool:
        return self.config.kd_on_policy_ratio > 0 or self.config.kd_teacher_replies

    def shard(self, ranks: Ranks, compute_dtype: torch.dtype | None = None) -> None:
        """As ``OnlineAlgorithm.shard``; the teacher samples in lockstep too."""
        super().shard(ranks, compute_dtype)
        if self.teacher_generator is not None:
            self.teacher_generator.synced_gpus = True

    def _build_teacher(self):
        """The frozen ``kd_teacher``, refused unless its tokenizer has the student's vocabulary."""
        cfg = self.config
        tokenizer = load_tokenizer(cfg.kd_teacher, trust_remote_code=cfg.trust_remote_code, key="kd_teacher")
        if vocab_fingerprint(tokenizer) != vocab_fingerprint(self.tokenizer):
            raise ValueError(f"kd_teacher: {cfg.kd_teacher}'s tokenizer (vocab {vocab_fingerprint(tokenizer)}) differs "
                             f"from the student's (vocab {vocab_fingerprint(self.tokenizer)}): KD needs the same "
                             f"vocabulary")
        return self.load_frozen(cfg.kd_teacher, "kd_teacher")

    def models(self) -> list[torch.nn.Module]:
        """The student and the live teacher (``compile`` and ``shard`` act on both)."""
        return [m for m in (self.model, self.teacher) if m is not None]

    def prepare_data(self, data):
        """Refuse targets from ``kd-extract`` made with another tokenizer or another temperature, and any such
        targets when a live ``kd_teacher`` makes its own."""
        for entry in self.config.datasets + self.config.test_datasets:
            meta = read_metadata(entry["path"])
            if meta is None:
                continue
            if self.teacher is not None:
                raise ValueError(f"datasets: {entry['path']} holds extracted teacher targets; with kd_teacher the "
                                 f"data is plain SFT rows (remove kd_teacher to train on the stored targets)")
            if meta["vocab_fingerprint"] != vocab_fingerprint(self.tokenizer):
                raise ValueError(
                    f"datasets: {entry['path']} holds targets of teacher {meta['teacher']!r} whose tokenizer "
                    f"({meta['tokenizer']}, vocab {meta['vocab_fingerprint']}) differs from the student's "
                    f"({self.tokenizer.name_or_path}, vocab {vocab_fingerprint(self.tokenizer)}): KD needs the same "
                    f"vocabulary")
            if meta["temperature"] != self.config.kd_generation_temperature:
                raise ValueError(
                    f"kd_generation_temperature: {entry['path']} was extracted at temperature {meta['temperature']}, "
                    f"set kd_generation_temperature: {meta['temperature']}")
        return data

    def updates(self, batches: list[dict]) -> list[list[dict]]:
        """One update over ``batches``, over the student's own replies to their prompts on an on-policy step, or
        else over the teacher's replies (``kd_teacher_replies``)."""
        if not self.samples_completions:
            return [batches]
        on_policy = random.Random(f"{self.config.seed}:{self.rounds}").random() < self.config.kd_on_policy_ratio
        self.rounds += 1
        if on_policy:
            return [self.sampled_batches(batches, on_policy=True)]
        if self.teacher_generator is not None:
            return [self.sampled_batches(batches, on_policy=False)]
        self.latest = []  # no samples to log for this step
        return [[{**batch, "on_policy": False} for batch in batches]]

    def sampled_batches(self, batches: list[dict], on_policy: bool) -> list[dict]:
        """The rows of ``batches`` with their last reply replaced by one the student (``on_policy``) or the teacher
        samples, as micro-batches of ``micro_batch_size`` rows (labels on the sampled tokens, EOS included). The
        ``kd_ce_alpha`` term is off on the student's samples, whose cross-entropy would only reinforce them."""
        prompt_batches = []
        for batch in batches:
            ids, mask = completion_prompts(batch["input_ids"], batch["labels"], self.pad_token_id)
            texts = self.tokenizer.batch_decode([row[m.bool()].tolist() for row, m in zip(ids, mask)],
                                                skip_special_tokens=True)
            prompt_batches.append({"prompt_input_ids": ids, "prompt_attention_mask": mask, "prompts": texts})
        sampled = self.sample(prompt_batches, self.generator if on_policy else self.teacher_generator)
        rollout = sampled.rollout
        metrics = as_floats(rollout.length_metrics("completions" if on_policy else "teacher_completions"))
        lengths, truncated = rollout.completion_lengths.tolist(), rollout.truncated.tolist()
        author = "student" if on_policy else "teacher"
        self.remember(sampled, lambda row: f"{author}, {lengths[row]} tokens" + (" (truncated)" * truncated[row]))
        rows = torch.arange(rollout.rows, device=self.device).split(self.config.micro_batch_size)
        return [{**select_rows(sampled.sequences, index), "on_policy": on_policy, "rollout_metrics": metrics}
                for index in rows]

    def evaluation_batches(self, batch: dict) -> list[dict]:
        """A held-out batch as it is: evaluation distils on the data's replies, never on sampled ones."""
        return [batch]

    def state(self) -> dict:
        """The latest samples (``OnlineAlgorithm.state``) and the steps drawn, so a resumed run draws the rest."""
        return {**super().state(), "rounds": self.rounds}

    def restore(self, state: dict) -> None:
        super().restore(state)
        self.rounds = state.get("rounds", 0)

    def teacher_targets(self, batch: dict) -> dict[str, torch.Tensor]:
        """``target_token_ids``, ``target_logprobs`` ``[B, T, kd_top_k]`` and ``target_mask`` ``[B, T]`` of
        ``batch`` from the live teacher, aligned with its labels (the completion positions)."""
        cfg = self.config
        completion = batch["labels"] != -100
        logprobs, ids = teacher_topk(self.teacher, batch["input_ids"], batch["attention_mask"], completion,
                                     cfg.kd_top_k, cfg.kd_generation_temperature, cfg.kernel_backend,
                                     batch.get("position_ids"))
        return {"target_token_ids": ids, "target_logprobs": logprobs, "target_mask": completion}

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        cfg = self.config
        on_policy = batch.get("on_policy")
        weight, bias = self.head()
        shared = dict(bias=bias, kd_temperature=cfg.kd_temperature, divergence=cfg.kd_divergence, kd_beta=cfg.kd_beta,
                      kd_alpha=cfg.kd_alpha, kd_ce_alpha=0.0 if on_policy else cfg.kd_ce_alpha, softcap=self.softcap,
                      backend=cfg.kernel_backend)
        if self.teacher is not None and cfg.kd_top_k is None:
            with torch.no_grad():
                teacher_hidden = self.hidden(batch, model=self.teacher)
            head = logit_head(self.teacher)
            loss, metrics = fused_linear_kd_loss(
                self.hidden(batch), weight, batch["labels"], teacher_hidden, head.weight, teacher_bias=head.bias,
                teacher_softcap=head.softcap, **shared)
        else:
            if self.teacher is not None:
                batch = {**batch, **self.teacher_targets(batch)}
            loss, metrics = fused_linear_topk_kd_loss(
                self.hidden(batch), weight, batch["labels"], batch["target_token_ids"], batch["target_logprobs"],
                target_mask=batch["target_mask"], teacher_temperature=cfg.kd_generation_temperature,
                kd_normalize_topk=cfg.kd_normalize_topk, **shared)
        drawn = {} if on_policy is None else {"on_policy": float(on_policy)}
        return loss, {**float_metrics(loss, metrics), **drawn, **batch.get("rollout_metrics", {})}
