"""The training loop: one readable function from config to checkpoints, metrics and plot."""
from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

from ..kernels.losses.sequence import stand_in
from .algorithms import build_algorithm
from .batches import BatchStream, fixed_batches
from .checkpoint import (claim_output_dir, list_checkpoints, load_checkpoint, load_round_tensors,
                         resolve_resume_path, save_checkpoint, write_folder_atomically)
from .config import TrainConfig
from .distributed import GradientSync, Ranks, init_ranks
from .metrics_log import MetricsLog, plot_curves
from .optim import build_optimizer, build_scheduler
from .preemption import Preempted, StopSignals
from .rounds import UpdateStream
from .sharding import loss_scale
from .training_data import load_training_data
from .wandb_log import WandbRun, check_wandb_installed

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run produced: final step, eval metrics before/after, output paths."""

    step: int
    eval_before: dict = field(default_factory=dict)
    eval_after: dict = field(default_factory=dict)
    train_losses: list = field(default_factory=list)
    output_dir: Path | None = None
    plot: Path | None = None


def set_seed(seed: int) -> None:
    """Seed python and torch (CPU and CUDA) generators."""
    random.seed(seed)
    torch.manual_seed(seed)


def uses_bf16_autocast(config: TrainConfig, device: torch.device) -> bool:
    """True on a GPU that supports bf16 when ``bf16`` is ``auto`` or ``true``."""
    wanted = config.bf16 is True or (config.bf16 == "auto" and device.type == "cuda")
    return wanted and device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast_context(config: TrainConfig, device: torch.device):
    """bf16 autocast where ``uses_bf16_autocast``; a no-op elsewhere."""
    if uses_bf16_autocast(config, device):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def total_steps(config: TrainConfig, batches_per_epoch: int, batches_per_round: int, updates_per_round: int) -> int:
    """Optimizer steps of the run: ``max_steps``, else epochs x micro-batches / round size x updates per round."""
    if config.max_steps is not None:
        return config.max_steps
    return max(1, math.ceil(batches_per_epoch * config.num_epochs / batches_per_round) * updates_per_round)


def _mean_metrics(parts: list[tuple[float, dict]], summed: tuple[str, ...] = ()) -> dict:
    """Weighted mean (``Algorithm.batch_weight``) of metric dicts from several batches; the ``summed``
    keys (counts such as SFT's ``num_tokens``) are totals instead.

    A key missing from some batches (KTO's ``rewards/chosen`` when a batch has no desirable
    row) is averaged over the batches that have it; ``rewards/margins`` is then the
    difference of the two means whenever both sides were seen.
    """
    keys = list(dict.fromkeys(k for _, m in parts for k in m))
    mean = {}
    for key in keys:
        having = [(n, m[key]) for n, m in parts if key in m]
        if key in summed:
            mean[key] = sum(v for _, v in having)
        else:
            mean[key] = sum(n * v for n, v in having) / (sum(n for n, _ in having) or 1.0)
    if "rewards/chosen" in mean and "rewards/rejected" in mean:
        mean["rewards/margins"] = mean["rewards/chosen"] - mean["rewards/rejected"]
    return mean


def evaluate(algorithm, batches: list[dict], config: TrainConfig, device: torch.device,
             ranks: Ranks | None = None, progress: bool = False) -> dict:
    """Mean metrics over the held-out batches, without gradients (online: over a rollout of them); a
    progress bar of the batches when ``progress``.

    Data parallel, rank ``r`` evaluates batches ``r, r + world_size, ...``; a rank with one batch fewer
    evaluates a stand-in inside ``stand_in()`` and drops its metrics, so every rank makes the same collective
    calls (KTO's KL, BCO's mean, GRPO's batch statistics) and the stand-in adds nothing to them."""
    if not batches:
        return {}
    ranks = ranks or Ranks()
    mine = batches[ranks.rank::ranks.world_size]
    algorithm.model.eval()
    parts = []
    rounds = math.ceil(len(batches) / ranks.world_size)
    with torch.no_grad(), autocast_context(config, device):
        for i in _progress_bar(range(rounds), rounds, 0, progress, "eval", leave=False):
            real = i < len(mine)
            with contextlib.nullcontext() if real else stand_in():
                batch = algorithm.to_device(mine[i] if real else batches[0])
                for micro_batch in algorithm.run(algorithm.evaluation_batches, batch):
                    _, metrics = algorithm.run(algorithm.loss, micro_batch)
                    if real:
                        parts.append((algorithm.batch_weight(micro_batch), metrics))
    algorithm.model.train()
    return _mean_metrics(ranks.gather(parts), algorithm.summed_keys)


def _prepare_models(algorithm, config: TrainConfig, ranks: Ranks) -> None:
    """Make the models the same on every rank, then apply gradient checkpointing, ``torch_compile`` and
    ``fsdp`` (in that order)."""
    if not algorithm.will_shard:  # else sharding hands out rank 0's weights
        ranks.broadcast_parameters(algorithm.model)
    if ranks.active:
        set_seed(config.seed + ranks.rank)  # the same init everywhere, then each rank samples its own
    if config.gradient_checkpointing:
        algorithm.enable_gradient_checkpointing()
    if config.torch_compile:
        algorithm.compile()
    if config.fsdp and not algorithm.will_shard:
        log.info("fsdp: a single process has nothing to shard; training unsharded")
    if algorithm.will_shard:  # under bf16 autocast the layers compute in bf16 anyway: gather them so
        algorithm.shard(ranks, torch.bfloat16 if uses_bf16_autocast(config, ranks.device) else None)


def _prepare_run(config: TrainConfig, ranks: Ranks):
    """The run's algorithm with its models prepared (``_prepare_models``), its data after ``prepare_data``, and
    the held-out micro-batches: ``(algorithm, TrainingData, eval_batches)``."""
    algorithm = build_algorithm(config, ranks.device)
    with ranks.main_first():
        raw_data = load_training_data(config, algorithm.tokenizer, algorithm.data_kind)
    _prepare_models(algorithm, config, ranks)
    data = algorithm.prepare_data(raw_data)
    if algorithm.sharded is not None:  # a no-grad pass (a precomputed reference) leaves the root's weights
        algorithm.sharded.reshard()    # gathered: the optimizer must be built on their shards
    try:
        eval_batches = fixed_batches(data.eval, config.eval_batch_size or config.micro_batch_size, data.collate,
                                     algorithm.min_batch_rows)
    except ValueError as err:
        raise ValueError(f"held-out set (test_datasets or val_set_size) for rl={config.rl}: {err}") from None
    return algorithm, data, eval_batches


def evaluate_config(config: TrainConfig, progress: bool | None = None) -> dict[str, float]:
    """``fusedrl eval``: the held-out metrics of ``base_model`` under ``config``'s algorithm, computed as a run
    logs them before its first step; nothing is trained or written. Under ``torchrun`` every rank runs it."""
    if not config.test_datasets and not config.val_set_size:
        raise ValueError("test_datasets: fusedrl eval needs a held-out set (test_datasets, or val_set_size > 0)")
    ranks = init_ranks()
    set_seed(config.seed)
    algorithm, _, eval_batches = _prepare_run(config, ranks)
    show = (config.progress_bar if progress is None else progress) and ranks.is_main
    metrics = evaluate(algorithm, eval_batches, config, ranks.device, ranks, show)
    ranks.close()
    return metrics


def train(config: TrainConfig, progress: bool | None = None) -> TrainResult:
    """Run ``config`` to completion (resuming when asked); return the run's summary.

    Under ``torchrun`` every rank runs this function (see distributed.py); rank 0 writes the outputs."""
    ranks = init_ranks()
    set_seed(config.seed)
    device = ranks.device
    out = Path(config.output_dir)
    resume = resolve_resume_path(out, config.resume_from_checkpoint)  # a wrong path fails before models load
    claim_output_dir(out, resume, config.overwrite_output_dir, ranks)
    check_wandb_installed(config.wandb_project)
    algorithm, data, eval_batches = _prepare_run(config, ranks)
    model = algorithm.model
    sharded = algorithm.will_shard

    stream = BatchStream(data.train, config.micro_batch_size, data.collate, config.seed, rank=ranks.rank,
                         world_size=ranks.world_size)
    if len(data.train) % stream.global_size and ranks.is_main:
        log.info("each epoch leaves out %d of %d training rows: the tail of its shuffled order that does not fill "
                 "a batch of %d (a different tail each epoch)", len(data.train) % stream.global_size,
                 len(data.train), stream.global_size)
    steps = total_steps(config, stream.batches_per_epoch, algorithm.batches_per_round, algorithm.updates_per_round)
    warmup = config.warmup_steps or int(config.warmup_ratio * steps)
    optimizer = build_optimizer(model, config.learning_rate, config.weight_decay,
                                (config.adam_beta1, config.adam_beta2), config.adam_epsilon)
    scheduler = build_scheduler(optimizer, steps, warmup, config.lr_scheduler, config.cosine_min_lr_ratio)
    updates = UpdateStream(algorithm, stream)
    gradient_sync = GradientSync(model, ranks, enabled=not sharded)  # FSDP reduces gradients itself

    step, tokens_seen, state = 0, 0.0, {}
    synced_reference = algorithm.reference if config.sync_ref_model else None  # trained state: checkpointed
    if resume is not None:
        state = load_checkpoint(resume, model, optimizer, ranks, sharded, synced_reference)
        step, tokens_seen = state["step"], state.get("num_input_tokens_seen", 0.0)
        stream.restore(state["data"])
        scheduler.load_state_dict(state["scheduler"])
        updates.restore(state["round"], load_round_tensors(resume, ranks))
        algorithm.restore(state.get("algorithm", {}))
        log.info("resumed from %s at step %d", resume, step)
        if state.get("total_steps", steps) != steps:
            log.warning("resume: this run has %d optimizer steps, the checkpoint's run had %d; the learning-rate "
                        "schedule (warmup %d, %s) is laid over the new total from step %d on", steps,
                        state["total_steps"], warmup, config.lr_scheduler, step)
    wandb_run = WandbRun(config, state.get("wandb_run_id")) if config.wandb_project and ranks.is_main else None
    metrics_log = MetricsLog(out, tensorboard=config.tensorboard, resume_step=step if resume is not None else None,
                             enabled=ranks.is_main, wandb_run=wandb_run)
    result = TrainResult(step=step, output_dir=out)
    show = (config.progress_bar if progress is None else progress) and ranks.is_main
    result.eval_before = evaluate(algorithm, eval_batches, config, device, ranks, show) if step == 0 else {}
    if result.eval_before:
        metrics_log.write(step, result.eval_before, prefix="eval")

    bar = _progress_bar(None, steps, step, show, "train")
    samples_every = max(1, steps // config.num_sample_generations) if config.num_sample_generations else 0
    model.train()
    with StopSignals() as signals:  # SIGTERM / SIGUSR1: checkpoint this step, then stop
        while step < steps:
            started = time.perf_counter()
            with autocast_context(config, device):
                micro_batches = updates.next()
            parts, grad_norm = _optimizer_step(algorithm, micro_batches, optimizer, gradient_sync, config, ranks)
            _stop_if_not_finite(grad_norm, step + 1, parts, out, ranks)
            optimizer.step()
            scheduler.step()
            step += 1
            if config.sync_ref_model and step % config.ref_model_sync_steps == 0:
                algorithm.sync_reference()
            tokens = ranks.sum(sum(float(batch["attention_mask"].sum()) for batch in micro_batches))
            tokens_seen += tokens
            step_time = time.perf_counter() - started
            metrics = {**_mean_metrics(ranks.gather(parts), algorithm.summed_keys), "grad_norm": grad_norm,
                       "lr": scheduler.get_last_lr()[0], "step_time": step_time,
                       "tokens_per_second": tokens / step_time, "num_input_tokens_seen": tokens_seen,
                       "epoch": stream.epoch + stream.index / len(stream.rows), **_peak_memory(device, ranks)}
            result.train_losses.append(metrics["loss"])
            if step % config.logging_steps == 0 or step == steps:
                metrics_log.write(step, metrics)
            if samples_every and step % samples_every == 0 and ranks.is_main:
                for name, text in algorithm.text_samples():
                    metrics_log.write_text(step, name, text)
            bar.update(1)
            bar.set_postfix({k: f"{metrics[k]:.4g}" for k in algorithm.progress_keys if k in metrics})
            if config.eval_steps and step % config.eval_steps == 0 and step < steps:
                metrics_log.write(step, evaluate(algorithm, eval_batches, config, device, ranks, show), prefix="eval")
            stop = signals.requested(ranks)
            if (config.save_steps and step % config.save_steps == 0) or stop:
                trainer_state = {"step": step, "data": stream.state(), "scheduler": scheduler.state_dict(),
                                 "algorithm": algorithm.state(), "world_size": ranks.world_size,
                                 "total_steps": steps, "num_input_tokens_seen": tokens_seen,
                                 "wandb_run_id": wandb_run.id if wandb_run else None}
                saved = save_checkpoint(out, step, model, optimizer, trainer_state, config.save_total_limit,
                                        *updates.state(), ranks=ranks, sharded=sharded, reference=synced_reference)
            if stop:
                bar.close()
                if wandb_run is not None:
                    wandb_run.mark_preempting()
                metrics_log.close()
                ranks.close()  # every rank stops here, after the same step
                raise Preempted(stop, step, saved)
    bar.close()

    result.step = step
    result.eval_after = evaluate(algorithm, eval_batches, config, device, ranks, show)
    if result.eval_after:
        metrics_log.write(step, result.eval_after, prefix="eval")
    whole = algorithm.whole_model(ranks)
    if ranks.is_main:
        write_folder_atomically(out / "final", lambda folder: algorithm.save_final(folder, whole))
    ranks.barrier()
    if config.plot and ranks.is_main:
        result.plot = plot_curves(metrics_log.records(), list(algorithm.plot_keys), out / "training_curves.png")
    metrics_log.close()
    ranks.close()
    return result


def _peak_memory(device: torch.device, ranks: Ranks) -> dict[str, float]:
    """On a GPU, ``max_memory_gib``: the most memory allocated during the step on any rank (then reset)."""
    if device.type != "cuda":
        return {}
    peak = max(ranks.gather([torch.cuda.max_memory_allocated(device) / 2**30]))
    torch.cuda.reset_peak_memory_stats(device)
    return {"max_memory_gib": peak}


def _optimizer_step(algorithm, micro_batches: list[dict], optimizer, gradient_sync: GradientSync,
                    config: TrainConfig, ranks: Ranks) -> tuple[list[tuple[float, dict]], float]:
    """Accumulate the gradients of one optimizer step's micro-batches and clip them (the optimizer has not
    stepped yet); return each micro-batch's ``(weight, metrics)`` and the gradient norm before clipping.

    Each loss is scaled by its micro-batch's share of the step's global weight (all ranks), so the summed
    gradients are those of the step's mean loss; the gradients are synced during the last backward."""
    optimizer.zero_grad(set_to_none=True)
    parts = []
    weights = [algorithm.batch_weight(batch) for batch in micro_batches]
    scale = loss_scale(algorithm.will_shard, ranks) / (ranks.sum(sum(weights)) or 1.0)
    for i, (batch, weight) in enumerate(zip(micro_batches, weights)):
        if i == len(micro_batches) - 1:
            gradient_sync.start()
        with autocast_context(config, ranks.device):
            loss, metrics = algorithm.run(algorithm.loss, batch)
        (loss * (weight * scale)).backward()
        parts.append((weight, metrics))
    gradient_sync.finish()
    return parts, _clip(algorithm.model, config.max_grad_norm)


def _stop_if_not_finite(grad_norm: float, step: int, parts: list[tuple[float, dict]], out: Path,
                        ranks: Ranks) -> None:
    """Stop the run before the optimizer applies a NaN or infinite gradient (the norm is global, so every rank
    stops at the same step, and the ranks close their process group together): the weights stay those of the
    step before."""
    if math.isfinite(grad_norm):
        return
    ranks.close()
    losses = ", ".join(f"{metrics['loss']:.4g}" for _, metrics in parts)
    found = list_checkpoints(out)
    raise FloatingPointError(
        f"step {step}: the gradient norm is {grad_norm} (this rank's micro-batch losses: {losses}); stopped before "
        f"the optimizer step, so no weight took it. The last checkpoint is {found[-1] if found else 'none'}; lower "
        f"learning_rate or look for a bad row in this step's data")


def _clip(model: torch.nn.Module, max_norm: float | None) -> float:
    """Clip the gradients' global norm to ``max_norm`` (None: only measure it); return the norm before."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, math.inf if max_norm is None else max_norm)
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)


def _progress_bar(items, total: int, initial: int, enabled: bool, desc: str, leave: bool = True):
    """A tqdm bar (over ``items`` when given) that shows only when ``enabled``."""
    from tqdm.auto import tqdm

    return tqdm(items, total=total, initial=initial, disable=not enabled, desc=desc, leave=leave,
                dynamic_ncols=True)
