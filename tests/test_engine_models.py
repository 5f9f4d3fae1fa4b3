"""Model loading guards and the trainer's metric averaging over micro-batches."""
import json

import pytest
import torch
from engine_fixtures import save_tiny_model, train_config
from fusedrl.engine.config import config_from_dict
from fusedrl.engine.models import load_causal_lm, load_tokenizer
from fusedrl.engine.trainer import _mean_metrics, train


def test_unloadable_model_names_its_config_key(tmp_path):
    """A folder without model files (or a hub id that cannot be fetched) fails with the config key, not an OSError."""
    with pytest.raises(ValueError, match=r"ref_model: cannot load .*config\.json"):
        load_causal_lm(str(tmp_path), key="ref_model")
    with pytest.raises(ValueError, match=r"tokenizer: cannot load "):
        load_tokenizer(str(tmp_path))


def test_mean_metrics_handles_keys_missing_from_some_micro_batches():
    """KTO leaves out a side with no rows in a micro-batch; the step mean uses the batches that have it."""
    parts = [(2, {"loss": 1.0, "rewards/chosen": 0.5}),
             (2, {"loss": 3.0, "rewards/rejected": -0.5}),
             (4, {"loss": 2.0, "rewards/chosen": 1.0, "rewards/rejected": 0.0, "rewards/margins": 1.0})]
    mean = _mean_metrics(parts)
    assert mean["loss"] == pytest.approx(2.0)
    assert mean["rewards/chosen"] == pytest.approx((2 * 0.5 + 4 * 1.0) / 6)
    assert mean["rewards/rejected"] == pytest.approx((2 * -0.5 + 4 * 0.0) / 6)
    assert mean["rewards/margins"] == pytest.approx(mean["rewards/chosen"] - mean["rewards/rejected"])


def test_kto_trains_with_gradient_accumulation(tmp_path):
    """Micro-batches of 2 unpaired rows often hold one side only; the step must still log both."""
    model_dir = save_tiny_model(tmp_path / "model")
    raw = train_config(model_dir, tmp_path / "run", "kto", micro_batch_size=2, gradient_accumulation_steps=4,
                       max_steps=3, eval_batch_size=2)
    result = train(config_from_dict(raw))
    assert result.step == 3


@pytest.mark.parametrize("rl, extra", [("sft", {}), ("dpo", {"rpo_alpha": None})], ids=["sft", "dpo"])
def test_step_loss_does_not_depend_on_the_micro_batch_split(rl, extra, tmp_path):
    """The same rows as one micro-batch or accumulated one by one: the same step loss (token mean for SFT,
    pair mean for DPO; DPO's RPO term is a token mean per micro-batch, as in TRL, so it is left out here)."""
    model_dir = save_tiny_model(tmp_path / "model")
    if rl == "sft":  # completions of very different lengths: a mean of micro-batch means would differ
        rows = [{"prompt": "What is 2+2?", "completion": "4"},
                {"prompt": "Say something.", "completion": "I am a small model and I like saying long things."}]
        data = tmp_path / "sft.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        extra = {"datasets": [{"path": str(data)}], "test_datasets": [{"path": str(data)}]}
    losses = []
    for micro, accumulation in ((2, 1), (1, 2)):
        raw = train_config(model_dir, tmp_path / f"run{micro}", rl, micro_batch_size=micro,
                           gradient_accumulation_steps=accumulation, max_steps=1, eval_steps=0, **extra)
        losses.append(train(config_from_dict(raw)).train_losses)
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


def test_fresh_run_into_a_used_output_dir_starts_a_new_log(tmp_path):
    """Records of an earlier run in the same output_dir (steps <= 0 included) do not leak into a fresh one."""
    model_dir = save_tiny_model(tmp_path / "model")
    raw = train_config(model_dir, tmp_path / "run", "sft", max_steps=2)
    train(config_from_dict(raw))
    first = (tmp_path / "run" / "metrics.jsonl").read_text()
    train(config_from_dict(raw))
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count('"split": "train"') == first.count('"split": "train"')
    assert sum(1 for line in first.splitlines() if '"step": 0' in line) == sum(
        1 for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"step": 0' in line)


@pytest.mark.parametrize("rl, overrides, dropout_left", [
    ("dpo", {}, False),
    ("sft", {}, True),  # SFT keeps the model's dropout unless asked
    ("sft", {"disable_dropout": True}, False),
    ("dpo", {"adapter": "lora", "lora_r": 4, "lora_dropout": 0.5}, False),
], ids=["dpo-default", "sft-default", "sft-disabled", "dpo-lora"])
def test_dropout_is_disabled_by_default_outside_sft(rl, overrides, dropout_left, tmp_path):
    """A model with attention dropout (a float the attention function reads) and LoRA dropout (nn.Dropout)."""
    import torch
    from transformers import LlamaForCausalLM

    from fusedrl.engine.algorithms import build_algorithm

    model_dir = save_tiny_model(tmp_path / "model")
    model = LlamaForCausalLM.from_pretrained(model_dir)
    model.config.attention_dropout = 0.5
    model.save_pretrained(model_dir, safe_serialization=True)
    algorithm = build_algorithm(config_from_dict(train_config(model_dir, tmp_path / "run", rl, **overrides)),
                                torch.device("cpu"))
    policy = algorithm.policy.train()
    ids = torch.arange(3, 19).view(2, 8)
    outputs = [policy(input_ids=ids).logits for _ in range(2)]
    assert (not torch.equal(*outputs)) == dropout_left
    rates = [m.p for m in policy.modules() if isinstance(m, torch.nn.Dropout)]
    assert bool(rates) == ("adapter" in overrides)  # LoRA dropout modules on every linear layer
    assert not any(rates)


def test_fsdp_refuses_a_model_without_decoder_layers():
    """Sharding needs the layer classes a Hugging Face model names in ``_no_split_modules``; a model without
    them is refused before any process group is touched."""
    from fusedrl.engine.distributed import Ranks
    from fusedrl.engine.sharding import shard

    with pytest.raises(ValueError, match=r"fsdp: found no decoder layers to shard in \['Linear'\]"):
        shard([torch.nn.Linear(2, 2)], Ranks(world_size=2))


@pytest.mark.parametrize("fsdp, rank, precompute, expected", [
    (False, 1, False, "meta"),  # replicated: straight to the device (the meta device stands in for a GPU)
    (True, 0, False, "cpu"),  # sharded: rank 0 reads the weights into host memory
    (True, 1, False, "meta"),  # the other ranks read none: their models are built on the meta device
    (True, 1, True, "meta"),  # so do they when the reference pass is precomputed: it runs sharded too
])
def test_where_models_load(fsdp, rank, precompute, expected, monkeypatch, tmp_path):
    """Under torchrun with ``fsdp`` the models wait on the CPU (sharding moves each rank's share to the
    device, so loading never puts a whole model there), and only rank 0 reads their weights; without
    ``fsdp`` they go to the device."""
    from fusedrl.engine.algorithms import build_algorithm

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", str(rank))
    model_dir = save_tiny_model(tmp_path / "model")
    config = config_from_dict(train_config(model_dir, tmp_path / "run", "dpo", fsdp=fsdp,
                                           precompute_ref_log_probs=precompute))
    algorithm = build_algorithm(config, torch.device("meta"))
    assert {p.device.type for m in (algorithm.model, algorithm.reference) for p in m.parameters()} == {expected}


def test_a_model_on_meta_is_the_loaded_model_without_weights(tmp_path):
    """``load_causal_lm(on_meta=True)`` (ranks other than 0 under fsdp) reads no weights but gives the same
    model: config, generation config (its EOS ids end sampling), parameter names, shapes and dtypes, mode."""
    model_dir = save_tiny_model(tmp_path / "model")
    loaded = load_causal_lm(str(model_dir), "bfloat16")
    empty = load_causal_lm(str(model_dir), "bfloat16", on_meta=True)
    assert empty.config.to_dict() == loaded.config.to_dict()
    assert empty.generation_config.to_dict() == loaded.generation_config.to_dict()
    assert empty.training == loaded.training
    shapes = {n: (p.shape, p.dtype) for n, p in loaded.named_parameters()}
    assert {n: (p.shape, p.dtype) for n, p in empty.named_parameters()} == shapes
    assert {p.device.type for p in empty.parameters()} == {"meta"}
