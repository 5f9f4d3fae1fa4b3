"""Data-parallel training under torchrun (two CPU ranks, gloo): the same run as one process with the
global batch, and an exact resume."""
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from engine_fixtures import REPO, save_tiny_model, train_config
from fusedrl.engine import checkpoint, distributed
from fusedrl.engine.cli import main as cli_main
from fusedrl.engine.config import config_from_dict
from fusedrl.engine.distributed import GradientSync, Ranks
from fusedrl.engine.trainer import train


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_command(raw: dict, folder, ranks: int = 2, port: int | None = None) -> tuple[list[str], dict]:
    """``(command, environment)`` of ``torchrun --nproc_per_node ranks -m fusedrl train`` on a YAML of ``raw``
    written to ``folder`` (CPU ranks, gloo, rendezvous on ``port``)."""
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--master_addr=127.0.0.1",
           f"--master_port={port or _free_port()}", "-m", "fusedrl", "train", str(path)]
    return cmd, env


def torchrun(raw: dict, folder, ranks: int = 2) -> str:
    """Run ``torchrun_command``; fails with its output, else returns its log (stderr)."""
    cmd, env = torchrun_command(raw, folder, ranks)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done.stderr


def records(out, split: str = "train") -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def _model() -> torch.nn.Module:
    """Buckets in reverse order: rank0_only (a gradient on rank 0 only), net's 4 trainable tensors, unused."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3), torch.nn.Linear(3, 2))
    net[3].requires_grad_(False)
    unused = torch.nn.Linear(2, 2)  # trainable, never gets a gradient
    return torch.nn.ModuleDict({"unused": unused, "net": net, "rank0_only": torch.nn.Linear(5, 1)})


def _micro_batch_loss(model, rank: int, micro: int) -> torch.Tensor:
    x = torch.linspace(-1, 1, 15).view(3, 5) * (1 + rank + 2 * micro)
    loss = model["net"](x).square().mean()
    return loss + model["rank0_only"](x).mean() if rank == 0 else loss


def _sync_worker(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        distributed.BUCKET_BYTES = 1  # a bucket per tensor
        model = _model()
        sync = GradientSync(model, Ranks(rank=rank, world_size=2))
        _micro_batch_loss(model, rank, 0).backward()
        sync.start()
        _micro_batch_loss(model, rank, 1).backward()
        launched_in_backward = len(sync.reductions)
        sync.finish()
        results[rank] = ({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
                         launched_in_backward, len(sync.buckets))
    finally:
        torch.distributed.destroy_process_group()


def test_gradient_sync_sums_over_ranks_during_the_backward():
    """Two micro-batches on each of two ranks, a bucket per tensor: the last backward launches the buckets'
    all-reduces in bucket order as they become final (rank 0: all but the unused layer's; rank 1: none,
    as its first bucket, rank0_only, gets no gradient there), so both ranks issue them in the same order;
    every rank ends with the sum over all four micro-batches, and no gradient where no rank had one (as
    one process: AdamW skips such a parameter)."""
    port = _free_port()
    results = torch.multiprocessing.Manager().dict()
    torch.multiprocessing.spawn(_sync_worker, args=(port, results), nprocs=2, join=True)
    model = _model()
    for rank in (0, 1):
        for micro in (0, 1):
            _micro_batch_loss(model, rank, micro).backward()
    expected = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert not any(name.startswith("unused") for name in expected)
    for rank, launched in ((0, 6), (1, 0)):
        grads, launched_in_backward, buckets = results[rank]
        assert buckets == 8 and launched_in_backward == launched
        assert grads.keys() == expected.keys()
        for name, grad in expected.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-6, atol=1e-7)


def _gather_worker(rank: int, port: int, model_dir: str, results) -> None:
    """Shard the tiny model over two gloo ranks; record layer 0's weight type after each of its forwards."""
    from torch.distributed.tensor import DTensor

    from fusedrl.engine.models import load_causal_lm
    from fusedrl.engine.sharding import gathered, shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = load_causal_lm(model_dir)
        root = shard([model], Ranks(rank=rank, world_size=2))
        layer = model.model.layers[0]
        seen = []
        layer.register_forward_hook(lambda *_: seen.append(isinstance(layer.mlp.up_proj.weight, DTensor)))
        prompt = torch.tensor([[5, 6, 7]])
        sample = {"max_new_tokens": 4, "do_sample": False, "synced_gpus": True}

        def generate_gathered():
            with gathered(model):
                return model.generate(input_ids=prompt, **sample)

        with torch.no_grad():
            tokens = root(generate_gathered)
            during, seen[:] = list(seen), []
            assert torch.equal(root(lambda: model.generate(input_ids=prompt, **sample)), tokens)
        results[rank] = (during, list(seen), isinstance(layer.mlp.up_proj.weight, DTensor))
    finally:
        torch.distributed.destroy_process_group()


def _tokens() -> torch.Tensor:
    return torch.arange(4 * 11).view(4, 11) * 7 % 50 + 3


def _sft_loss(model, ids: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of ``ids`` with the fused kernel, times ``scale`` (an fp32 loss input)."""
    from fusedrl.kernels import linear_cross_entropy

    hidden = model.model(input_ids=ids).last_hidden_state
    return linear_cross_entropy(hidden[:, :-1].flatten(0, 1), model.lm_head.weight, ids[:, 1:].flatten(),
                                reduction="sum") * scale


def _mixed_precision_worker(rank: int, port: int, model_dir: str, results) -> None:
    """Two gloo ranks shard the tiny model with bf16 compute; each backpropagates its half of the rows."""
    from fusedrl.engine.models import load_causal_lm
    from fusedrl.engine.sharding import shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = load_causal_lm(model_dir)
        root = shard([model], Ranks(rank=rank, world_size=2), torch.bfloat16)
        seen = {}

        def loss(ids, scale):
            seen.update(weight=model.lm_head.weight.dtype, scale=scale.dtype)
            return _sft_loss(model, ids, scale)

        root(loss, _tokens()[rank::2], torch.tensor(0.01 * 2)).backward()  # x2: FSDP averages over ranks
        grads = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
        results[rank] = (seen, {n: p.dtype for n, p in model.named_parameters()}, grads)
    finally:
        torch.distributed.destroy_process_group()


def test_fsdp_mixed_precision_computes_in_bf16_and_reduces_in_fp32(model_dir):
    """With a bf16 compute dtype (the trainer's choice under bf16 autocast) the layers and the lm_head the
    fused loss reads are gathered in bf16, the loss's own float inputs are not cast, and the fp32
    parameters get fp32 gradients that match an unsharded fp32 backward within bf16 tolerance."""
    from fusedrl.engine.models import load_causal_lm

    port = _free_port()
    results = torch.multiprocessing.Manager().dict()
    torch.multiprocessing.spawn(_mixed_precision_worker, args=(port, str(model_dir), results), nprocs=2, join=True)
    model = load_causal_lm(str(model_dir))
    _sft_loss(model, _tokens(), torch.tensor(0.01)).backward()
    for rank in (0, 1):
        seen, dtypes, grads = results[rank]
        assert seen == {"weight": torch.bfloat16, "scale": torch.float32}
        assert set(dtypes.values()) == {torch.float32}
        for name, param in model.named_parameters():
            assert grads[name].dtype == torch.float32
            torch.testing.assert_close(grads[name], param.grad, atol=1e-2, rtol=2e-2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


SFT_ROWS = [{"path": str(REPO / "data" / "demo" / "sft_train.jsonl")}]


@pytest.mark.parametrize("rl, micro, extra", [
    # replicated ranks: every weight (dpo), then label-token weighting with accumulation (sft)
    ("dpo", 2, {"rpo_alpha": None, "eval_batch_size": 10}),  # RPO's NLL is a token mean per micro-batch
    ("sft", 1, {"adapter": "lora", "lora_r": 4, "gradient_checkpointing": True, "gradient_accumulation_steps": 2}),
    ("sft", 1, {"adapter": "lora", "lora_r": 4, "gradient_checkpointing": True, "gradient_accumulation_steps": 2,
                "fsdp": True}),
    ("rm", 2, {"fsdp": True, "eval_batch_size": 10}),
    ("prm", 2, {"fsdp": True, "eval_batch_size": 10}),  # the loss is a mean over the labelled steps of all ranks
    ("dpo", 2, {"rpo_alpha": None, "adapter": "lora", "lora_r": 4, "precompute_ref_log_probs": True,
                "fsdp": True}),  # each rank computes half the reference rows
    # 155 training rows: rank 0 precomputes 78 in 12 batches of 7, rank 1 77 in 11 and a stand-in batch
    ("dpo", 2, {"rpo_alpha": None, "precompute_ref_log_probs": True, "fsdp": True, "test_datasets": [],
                "val_set_size": 0.15, "eval_batch_size": 7}),
    ("kd", 2, {"fsdp": True, "kd_teacher": "seed-1", "kd_top_k": 5, "kd_ce_alpha": 0.5, "datasets": SFT_ROWS,
               "test_datasets": [], "val_set_size": 0.1}),  # a live teacher, sharded beside the student
    ("kd", 2, {"fsdp": True, "kd_teacher": "seed-1", "kd_divergence": "jsd", "datasets": SFT_ROWS,
               "test_datasets": [], "val_set_size": 0.1}),  # its whole distribution (kd_top_k null)
    # the reference copy is sharded too, and synced shard-wise; rank 1 evaluates a stand-in batch
    ("dpo", 2, {"rpo_alpha": None, "eval_batch_size": 10, "fsdp": True, "sync_ref_model": True,
                "ref_model_sync_steps": 1}),
], ids=["dpo", "sft-lora-checkpointing-accumulation",
        "fsdp-sft-lora-checkpointing-accumulation", "fsdp-rm", "fsdp-prm",
        "fsdp-dpo-lora-precomputed-reference",
        "fsdp-dpo-precomputed-reference-uneven-shares", "fsdp-kd-live-teacher", "fsdp-kd-live-teacher-full-vocabulary",
        "fsdp-dpo-synced-reference"])
def test_two_ranks_match_one_process_with_the_global_batch(rl, micro, extra, model_dir, tmp_path):
    """Two ranks of ``micro`` rows draw the rows one process of ``2 * micro`` does; the summed gradients
    (losses scaled by the global weight: label tokens for SFT, labelled steps for PRM, rows otherwise) give the
    same run. DPO's
    26 held-out pairs make 3 evaluation batches: rank 1 evaluates one and a stand-in it leaves out.
    With ``fsdp`` each rank holds half of every weight, gradient and AdamW moment, and ``final/`` is gathered.
    The reward models' scores move fast (lr 5e-3 on a few pairs): AdamW turns the last-bit differences of
    other padding lengths into about 1e-4 of relative difference after three steps, with or without fsdp."""
    rel, atol = (1e-3, 1e-4) if rl in ("rm", "prm") else (1e-4, 1e-5)
    if "kd_teacher" in extra:
        extra = {**extra, "kd_teacher": str(save_tiny_model(tmp_path / "teacher", seed=1))}
    one = train_config(model_dir, tmp_path / "one", rl, micro_batch_size=2 * micro, max_steps=3, eval_steps=0,
                       **extra)
    train(config_from_dict({**one, "fsdp": False}))
    log = torchrun({**one, "output_dir": str(tmp_path / "two"), "micro_batch_size": micro}, tmp_path)
    if extra.get("fsdp"):
        local, whole = map(float, re.search(r"each holds ([\d.]+) MiB of the ([\d.]+) MiB", log).groups())
        assert 0.45 * whole < local < 0.55 * whole
        assert "the weights were read by rank 0 only" in log

    for split in ("train", "eval"):
        expected, got = records(tmp_path / "one", split), records(tmp_path / "two", split)
        assert [r["step"] for r in got] == [r["step"] for r in expected]
        for want, have in zip(expected, got):
            assert have.keys() == want.keys()
            for key in want.keys() - {"step_time", "tokens_per_second", "split"}:
                if key == "nll_loss" or key.startswith("logits/"):
                    continue  # token means of each micro-batch, averaged by rows: they depend on the split
                assert have[key] == pytest.approx(want[key], rel=rel, abs=1e-6), (split, key)
    weights_one = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    weights_two = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    for name, value in weights_one.items():
        torch.testing.assert_close(weights_two[name], value, rtol=rel, atol=atol)


def test_kto_on_two_ranks_evaluates_in_step(model_dir, tmp_path):
    """KTO's KL estimate is summed over ranks inside the loss: training and evaluation (two held-out
    batches, one per rank) must call it the same number of times on both ranks."""
    raw = train_config(model_dir, tmp_path / "two", "kto", micro_batch_size=2, max_steps=2, eval_steps=1,
                       eval_batch_size=2)
    torchrun(raw, tmp_path)
    evals = records(tmp_path / "two", "eval")
    assert [r["step"] for r in evals] == [0, 1, 2]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["kl"]) for r in evals)


def _worker_pid(port: int, rank: int) -> int | None:
    """The process of the torchrun worker of ``rank`` in the run that meets on ``port`` (from /proc)."""
    wanted = {f"MASTER_PORT={port}".encode(), f"RANK={rank}".encode()}
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if wanted <= set(environ.read_bytes().split(b"\0")):
                return int(environ.parent.name)
        except OSError:  # a process that ended, or another user's
            continue
    return None


def test_a_signal_to_one_rank_stops_both_after_the_same_step(model_dir, tmp_path):
    """SIGUSR1 to rank 1 alone: both ranks stop after the same step, which is checkpointed (both ranks' states,
    no save_steps), and torchrun resumes it to the end."""
    out = tmp_path / "run"
    raw = train_config(model_dir, out, "sft", max_steps=1000, micro_batch_size=1)
    port = _free_port()
    cmd, env = torchrun_command(raw, tmp_path, port=port)
    run = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not ((out / "metrics.jsonl").is_file() and records(out)) and run.poll() is None:
        assert time.monotonic() < deadline, "no training step logged in 300 s"
        time.sleep(0.2)
    os.kill(_worker_pid(port, 1), signal.SIGUSR1)
    _, log = run.communicate(timeout=300)
    assert run.returncode != 0
    (stopped,) = checkpoint.list_checkpoints(out)
    step = int(stopped.name.split("-")[1])
    assert step < 1000 and f"fusedrl: stopped by SIGUSR1 after step {step}; " in log
    assert (stopped / "rank-1" / "rank_state.json").is_file() and not (out / "final").exists()
    torchrun({**raw, "max_steps": step + 2, "resume_from_checkpoint": "latest"}, tmp_path)
    assert [r["step"] for r in records(out)][-2:] == [step + 1, step + 2] and (out / "final").is_dir()


def test_two_sharded_ranks_resume_exactly(model_dir, tmp_path):
    """GRPO on two fsdp ranks (each samples its own completions, in lockstep), checkpointed every step and
    resumed from the middle of a round: the same losses and final weights as the uninterrupted run. Each rank's
    checkpoint holds its half of the weights and AdamW moments and its RNG state. The reference is synced after
    every step (``sync_ref_model``), so the resumed run reads each rank's reference shards when it scores its
    next rollout. (Replicated ranks resume through the same per-rank state: the signal test above resumes them
    under torchrun, and single-process resumes are checked exactly in test_engine_checkpoint.)"""
    raw = {
        "base_model": str(model_dir), "rl": "grpo", "datasets": [{"path": str(REPO / "data" / "demo" /
                                                                          "arithmetic_train.jsonl")}],
        "output_dir": str(tmp_path / "full"), "max_length": 96, "max_prompt_length": 64, "micro_batch_size": 1,
        "num_generations": 2, "max_completion_length": 6, "num_iterations": 2, "max_steps": 4, "save_steps": 1,
        "save_total_limit": None, "learning_rate": 1e-3, "lr_scheduler": "constant", "seed": 3,
        "reward_funcs": ["accuracy"], "tensorboard": False, "plot": False, "progress_bar": False,
        "kernel_backend": "torch", "num_sample_generations": 0, "fsdp": True, "sync_ref_model": True,
        "ref_model_sync_steps": 1,
    }
    torchrun(raw, tmp_path)
    full = tmp_path / "full"
    assert (full / "checkpoint-1" / "rank-1" / "rank_state.json").is_file()
    whole = load_file(str(full / "final" / "model.safetensors"))
    halves = [load_file(str(folder / "model_shard.safetensors"))
              for folder in (full / "checkpoint-1", full / "checkpoint-1" / "rank-1")]
    for name, value in whole.items():  # dim 0 split over the ranks
        assert [half[name].shape[1:] for half in halves] == [value.shape[1:]] * 2
        assert halves[0][name].shape[0] + halves[1][name].shape[0] == value.shape[0] > halves[0][name].shape[0]
    assert (full / "checkpoint-1" / "rank-1" / "optimizer.safetensors").is_file()
    assert (full / "checkpoint-1" / "rank-1" / "reference_shard.safetensors").is_file()
    assert not (full / "checkpoint-1" / "model.safetensors").exists()
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    subprocess.run(["cp", "-r", str(full / "checkpoint-1"), str(resumed / "checkpoint-1")], check=True)
    subprocess.run(["cp", str(full / "metrics.jsonl"), str(resumed / "metrics.jsonl")], check=True)
    torchrun({**raw, "output_dir": str(resumed), "resume_from_checkpoint": "latest"}, tmp_path)
    assert [r["loss"] for r in records(resumed)] == [r["loss"] for r in records(full)]
    expected = load_file(str(full / "final" / "model.safetensors"))
    got = load_file(str(resumed / "final" / "model.safetensors"))
    assert [name for name in expected if not torch.equal(got[name], expected[name])] == []
    config = tmp_path / "export.yaml"  # the last checkpoint, its shards joined by `fusedrl export`, is the final model
    config.write_text(yaml.safe_dump(raw))
    assert cli_main(["export", str(config), "latest", str(tmp_path / "exported")]) == 0
    exported = load_file(str(tmp_path / "exported" / "model.safetensors"))
    assert exported.keys() == expected.keys()
    assert [name for name in expected if not torch.equal(exported[name], expected[name])] == []


def test_fsdp_ppo_matches_replicated_ranks(model_dir, tmp_path):
    """PPO shards the policy, the value model, the reference and the reward model: two ranks with fsdp sample
    the same completions as two replicated ranks and make the same updates. Sampling here gathers each layer
    at each new token (``fsdp_gather_for_generation: false``; GRPO's resume test covers the default)."""
    from fusedrl.engine.models import RewardModel, load_causal_lm

    reward_model = RewardModel(load_causal_lm(str(save_tiny_model(tmp_path / "rm-backbone", seed=1))))
    reward_model.save_pretrained(str(tmp_path / "rm"))
    raw = {
        "base_model": str(model_dir), "rl": "ppo", "reward_model": str(tmp_path / "rm"),
        "datasets": [{"path": str(REPO / "data" / "demo" / "arithmetic_train.jsonl")}],
        "max_length": 96, "max_prompt_length": 64, "micro_batch_size": 2, "num_mini_batches": 2,
        "num_ppo_epochs": 2, "max_completion_length": 6, "max_steps": 4, "learning_rate": 1e-3,
        "lr_scheduler": "constant", "seed": 3, "tensorboard": False, "plot": False, "progress_bar": False,
        "kernel_backend": "torch", "num_sample_generations": 0,
    }
    torchrun({**raw, "output_dir": str(tmp_path / "replicated")}, tmp_path)
    torchrun({**raw, "output_dir": str(tmp_path / "fsdp"), "fsdp": True, "fsdp_gather_for_generation": False},
             tmp_path)
    expected, got = records(tmp_path / "replicated"), records(tmp_path / "fsdp")
    assert len(got) == len(expected) == 4
    for want, have in zip(expected, got):
        for key in ("loss", "objective/scores", "objective/kl", "loss/value_avg", "grad_norm"):
            assert have[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
    for part in ("model.safetensors", "value_model/model.safetensors", "value_model/value_head.safetensors"):
        want = load_file(str(tmp_path / "replicated" / "final" / part))
        have = load_file(str(tmp_path / "fsdp" / "final" / part))
        for name, value in want.items():
            torch.testing.assert_close(have[name], value, rtol=1e-4, atol=1e-5)


def test_fsdp_online_dpo_matches_replicated_ranks(model_dir, tmp_path):
    """Online DPO with the policy and its reference sharded: the same pairs and updates as two replicated ranks."""
    raw = train_config(model_dir, tmp_path / "replicated", "online_dpo",
                       datasets=[{"path": str(REPO / "data" / "demo" / "arithmetic_train.jsonl")}], test_datasets=[],
                       reward_funcs=["length"], max_length=96, max_completion_length=6, max_steps=3,
                       num_sample_generations=0)
    torchrun(raw, tmp_path)
    torchrun({**raw, "output_dir": str(tmp_path / "fsdp"), "fsdp": True}, tmp_path)
    expected, got = records(tmp_path / "replicated"), records(tmp_path / "fsdp")
    assert len(got) == len(expected) == 3
    for want, have in zip(expected, got):
        for key in ("loss", "objective/scores", "objective/scores_margin", "rewards/margins", "grad_norm"):
            assert have[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
    want = load_file(str(tmp_path / "replicated" / "final" / "model.safetensors"))
    have = load_file(str(tmp_path / "fsdp" / "final" / "model.safetensors"))
    for name, value in want.items():
        torch.testing.assert_close(have[name], value, rtol=1e-4, atol=1e-5)


def test_fsdp_on_policy_kd_matches_replicated_ranks(model_dir, tmp_path):
    """On-policy KD on two ranks, the other steps on the teacher's replies: every rank draws the same steps to
    sample on (all ranks must sample together under fsdp), and with the student and the live teacher sharded
    the run samples the same replies (the student's and the teacher's) and makes the same updates as two
    replicated ranks."""
    raw = train_config(model_dir, tmp_path / "replicated", "kd", datasets=SFT_ROWS, max_length=160,
                       kd_teacher=str(save_tiny_model(tmp_path / "teacher", seed=1)), kd_top_k=5,
                       kd_on_policy_ratio=0.5, kd_teacher_replies=True, kd_ce_alpha=0.5, max_completion_length=6,
                       max_steps=4, test_datasets=[])
    torchrun(raw, tmp_path)
    torchrun({**raw, "output_dir": str(tmp_path / "fsdp"), "fsdp": True}, tmp_path)
    expected, got = records(tmp_path / "replicated"), records(tmp_path / "fsdp")
    assert [r["on_policy"] for r in expected] == [r["on_policy"] for r in got] and 0 < sum(
        r["on_policy"] for r in got) < 4
    for want, have in zip(expected, got):
        assert have.keys() == want.keys()
        for key in ("loss", "kd_loss", "grad_norm", "completions/mean_length", "teacher_completions/mean_length"):
            if key in want:
                assert have[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
    want = load_file(str(tmp_path / "replicated" / "final" / "model.safetensors"))
    have = load_file(str(tmp_path / "fsdp" / "final" / "model.safetensors"))
    for name, value in want.items():
        torch.testing.assert_close(have[name], value, rtol=1e-4, atol=1e-5)


def _precompute_worker(rank: int, port: int, raw: dict, results) -> None:
    """Prepare a DPO run with fsdp and a precomputed reference on two gloo ranks; record the causal LMs still
    alive once the reference pass is done, and the sharded roots' parameter counts."""
    import gc

    from transformers import LlamaForCausalLM

    from fusedrl.engine.distributed import init_ranks
    from fusedrl.engine.trainer import _prepare_run

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", CUDA_VISIBLE_DEVICES="")
    ranks = init_ranks()
    try:
        algorithm, data, _ = _prepare_run(config_from_dict(raw), ranks)
        gc.collect()
        alive = sum(isinstance(obj, LlamaForCausalLM) for obj in gc.get_objects())
        results[rank] = (alive, algorithm.reference is None, "ref_chosen_logps" in data.train.column_names,
                         sum(p.numel() for p in algorithm.sharded.parameters()),
                         sum(p.numel() for p in algorithm.model.parameters()))
    finally:
        ranks.close()


def test_fsdp_precomputed_reference_is_freed_after_its_pass(model_dir, tmp_path):
    """Under fsdp the reference read only by ``precompute_ref_log_probs`` has a sharded root of its own: after
    the pass no reference model is left on any rank (the policy is the one causal LM alive), and the training
    root holds the policy's shards only."""
    raw = train_config(model_dir, tmp_path / "run", "dpo", fsdp=True, precompute_ref_log_probs=True, rpo_alpha=None)
    results = torch.multiprocessing.Manager().dict()
    torch.multiprocessing.spawn(_precompute_worker, args=(_free_port(), raw, results), nprocs=2, join=True)
    for rank in (0, 1):
        alive, released, precomputed, root_size, policy_size = results[rank]
        assert (alive, released, precomputed) == (1, True, True)
        assert root_size == policy_size


def test_sampling_gathers_each_sharded_layer_once(model_dir):
    """Under ``gathered`` a sharded layer stays whole between its forwards (a per-token forward would
    otherwise gather it from every rank each time), and is sharded again after the block; greedy
    sampling gives the same tokens either way."""
    port = _free_port()
    results = torch.multiprocessing.Manager().dict()
    torch.multiprocessing.spawn(_gather_worker, args=(port, str(model_dir), results), nprocs=2, join=True)
    for rank in (0, 1):
        during, per_forward, sharded_after = results[rank]
        assert len(during) == 4 and not any(during)  # the prompt's forward, then one per new token
        assert len(per_forward) == 4 and all(per_forward)
        assert sharded_after
