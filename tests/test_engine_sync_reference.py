"""TR-DPO's synced reference (``sync_ref_model``): ``ref <- alpha * policy + (1 - alpha) * ref`` every
``ref_model_sync_steps`` steps, kept in checkpoints so a resumed run continues from it."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from engine_fixtures import REPO, save_tiny_model, train_config
from fusedrl.engine.config import ConfigError, config_from_dict
from fusedrl.engine.trainer import train

ARITHMETIC = REPO / "data" / "demo" / "arithmetic_train.jsonl"
ONLINE = {"datasets": [{"path": str(ARITHMETIC)}], "test_datasets": [], "reward_funcs": ["accuracy"],
          "max_length": 96, "max_completion_length": 6, "num_sample_generations": 0}
EXTRA = {"dpo": {"rpo_alpha": None}, "kto": {}, "grpo": {**ONLINE, "num_generations": 2, "beta": 0.1},
         "ppo": {**ONLINE, "reward_funcs": [], "num_ppo_epochs": 1}, "online_dpo": ONLINE}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny", tie_embeddings=False)


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    from fusedrl.engine.models import RewardModel, load_causal_lm

    folder = tmp_path_factory.mktemp("rm")
    RewardModel(load_causal_lm(str(save_tiny_model(folder / "backbone", seed=1)))).save_pretrained(str(folder / "rm"))
    return folder / "rm"


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["split"] == "train"]


@pytest.mark.parametrize("rl", ["dpo", "kto", "grpo", "ppo", "online_dpo"])
def test_every_sync_mixes_the_policy_into_the_reference(rl, model_dir, reward_model_dir, tmp_path):
    """Checkpointed after every step with syncs after steps 2 and 4: the reference stays the starting model,
    then becomes 0.6 x that step's policy + 0.4 x the reference before, and stays so until the next sync. The
    loss reads it: up to step 2 the run equals one without syncs, step 3 differs (PPO's policy, inside the
    policy-and-value module, is mixed by its own parameter names)."""
    extra = {**EXTRA[rl], **({"reward_model": str(reward_model_dir)} if rl == "ppo" else {})}
    raw = train_config(model_dir, tmp_path / "synced", rl, max_steps=4, save_steps=1, save_total_limit=None,
                       sync_ref_model=True, ref_model_sync_steps=2, **extra)
    train(config_from_dict(raw))
    train(config_from_dict({**raw, "output_dir": str(tmp_path / "plain"), "sync_ref_model": False,
                            "ref_model_sync_steps": 512, "save_steps": None}))
    run = tmp_path / "synced"
    reference = weights(model_dir)
    for step in (1, 2, 3, 4):
        if step % 2 == 0:
            policy = weights(run / f"checkpoint-{step}")
            reference = {name: 0.6 * policy[name] + 0.4 * value for name, value in reference.items()}
        saved = weights(run / f"checkpoint-{step}" / "reference")
        assert saved.keys() == reference.keys()
        for name, value in reference.items():
            torch.testing.assert_close(saved[name], value, rtol=1e-6, atol=1e-7, msg=f"step {step}: {name}")
    synced, plain = losses(run), losses(tmp_path / "plain")
    assert synced[:2] == plain[:2] and synced[2] != plain[2]


def test_resumed_run_continues_from_the_synced_reference(model_dir, tmp_path):
    """Resumed from step 3 (the reference synced after step 2), the run makes the uninterrupted one's losses
    and weights; a checkpoint written without syncing has no reference to resume a synced run from."""
    raw = train_config(model_dir, tmp_path / "full", "dpo", max_steps=5, save_steps=3, sync_ref_model=True,
                       ref_model_sync_steps=2, rpo_alpha=None)
    train(config_from_dict(raw))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-3", resumed / "checkpoint-3")
    shutil.copy(tmp_path / "full" / "metrics.jsonl", resumed / "metrics.jsonl")
    train(config_from_dict({**raw, "output_dir": str(resumed), "resume_from_checkpoint": "latest"}))
    assert losses(resumed) == losses(tmp_path / "full")
    expected, got = weights(tmp_path / "full" / "final"), weights(resumed / "final")
    assert [name for name in expected if not torch.equal(got[name], expected[name])] == []

    plain = train_config(model_dir, tmp_path / "plain", "dpo", max_steps=1, save_steps=1, rpo_alpha=None)
    train(config_from_dict(plain))
    with pytest.raises(ValueError, match=r"checkpoint-1 holds no reference model .* resume it with sync_ref_model: "
                                         r"false"):
        train(config_from_dict({**plain, "max_steps": 2, "sync_ref_model": True,
                                "resume_from_checkpoint": str(tmp_path / "plain" / "checkpoint-1")}))


def test_a_ref_model_of_another_shape_is_refused(model_dir, tmp_path):
    other = tmp_path / "wider"
    save_tiny_model(other)
    config = json.loads((other / "config.json").read_text())
    config.update(intermediate_size=48)
    (other / "config.json").write_text(json.dumps(config))
    from transformers import AutoConfig, AutoModelForCausalLM

    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(other)).save_pretrained(other)
    raw = train_config(model_dir, tmp_path / "run", "dpo", sync_ref_model=True, ref_model=str(other), max_steps=1)
    with pytest.raises(ValueError, match=r"^sync_ref_model: ref_model .*wider has other parameters than base_model"):
        train(config_from_dict(raw))


@pytest.mark.parametrize("rl, extra, message", [
    ("dpo", {"adapter": "lora"}, r"sync_ref_model: not with adapter: lora"),
    ("dpo", {"precompute_ref_log_probs": True}, r"sync_ref_model: precompute_ref_log_probs computes the reference"),
    ("grpo", {**ONLINE, "beta": 0.0}, r"sync_ref_model: rl=grpo with beta: 0 loads no reference model"),
    ("sft", {}, r"sync_ref_model: rl=sft does not read it"),
    ("cpo", {}, r"sync_ref_model: rl=cpo does not read it"),
], ids=["lora", "precomputed", "grpo-no-reference", "sft", "cpo"])
def test_sync_config_errors(rl, extra, message, model_dir, tmp_path):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(train_config(model_dir, tmp_path, rl, sync_ref_model=True, **extra))


def test_sync_settings_need_the_switch(model_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"ref_model_sync_steps: only read with sync_ref_model: true"):
        config_from_dict(train_config(model_dir, tmp_path, "dpo", ref_model_sync_steps=8))
    with pytest.raises(ConfigError, match=r"ref_model_mixup_alpha"):
        config_from_dict(train_config(model_dir, tmp_path, "dpo", sync_ref_model=True, ref_model_mixup_alpha=0.0))
