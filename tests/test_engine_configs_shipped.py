"""Every config in configs/ validates and trains a couple of steps on a tiny model."""
from pathlib import Path

import pytest

from engine_fixtures import DATA, REPO, save_tiny_model
from fusedrl.engine.config import load_config
from fusedrl.engine.models import RewardModel, load_causal_lm
from fusedrl.engine.trainer import train
from tokenizer_fixture import tiny_tokenizer

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def reward_model_dir(model_dir, tmp_path_factory):
    """A tiny reward model (the tiny backbone + a random value head), for configs that need one (PPO)."""
    folder = tmp_path_factory.mktemp("tiny-reward-model")
    RewardModel(load_causal_lm(str(model_dir))).save_pretrained(str(folder))
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_every_algorithm_has_a_config():
    algorithms = {load_config(p).rl for p in CONFIGS}
    assert {"sft", "dpo", "ipo", "cpo", "simpo", "orpo", "kto", "rm", "prm", "kd", "ppo", "grpo",
            "online_dpo"} <= algorithms


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_trains_on_tiny_model(path: Path, model_dir, reward_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    overrides = ["--base_model", str(model_dir), "--max_steps", "2", "--micro_batch_size", "2",
                 "--max_length", "160", "--output_dir", str(tmp_path / "out"), "--tensorboard", "false",
                 "--plot", "false", "--progress_bar", "false"]
    shipped = load_config(path)
    if shipped.kd_teacher:
        overrides += ["--kd_teacher", str(model_dir)]
    elif shipped.rl == "kd":
        overrides += ["--datasets", f"[{{path: {DATA['kd']}}}]"]
    if shipped.reward_model:
        overrides += ["--reward_model", str(reward_model_dir)]
    result = train(load_config(path, overrides))
    assert result.step == 2
    assert (tmp_path / "out" / "final").is_dir()
