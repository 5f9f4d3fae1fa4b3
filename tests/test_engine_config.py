"""Config loading: aliases, overrides, and the promised errors before any model loads."""
import pytest
import yaml

from engine_fixtures import DEMO_TRAIN, save_tiny_model, train_config
from fusedrl.engine.cli import main
from fusedrl.engine.config import ConfigError, config_from_dict, load_config, parse_overrides
from fusedrl.engine.trainer import train

BASE = {"base_model": "some/model", "rl": "dpo", "datasets": [{"path": "data.jsonl"}]}


def test_aliases_and_defaults():
    config = config_from_dict({**BASE, "rl": "kto", "rl_beta": 0.3, "kto_desirable_weight": 2, "adapter": "lora",
                               "rl_adapter_ref_model": True})
    assert config.beta == 0.3 and config.desirable_weight == 2.0 and config.rl_adapter_ref_model
    assert config_from_dict({**BASE, "rl": "simpo"}).effective_beta == 2.0
    assert config_from_dict({**BASE, "rl": "orpo", "orpo_alpha": 0.2}).effective_beta == 0.2
    assert config_from_dict(BASE).effective_beta == 0.1 and config_from_dict(BASE).rpo_alpha == 1.0


@pytest.mark.parametrize("bad, message", [
    ({"bta": 0.1}, "unknown key 'bta'; did you mean 'beta'"),
    ({"learning_rat": 1e-5}, "did you mean 'learning_rate'"),
    ({"beta": "high"}, "beta: expected"),
    ({"beta": -1.0}, "beta: expected a value > 0"),
    ({"rl": "dop"}, "rl: expected one of"),
    ({"micro_batch_size": 1.5}, "micro_batch_size: expected"),
    ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps: expected a value >= 1"),
    ({"adapter": "qlora"}, "adapter: expected one of"),
    ({"max_prompt_length": 2048}, "max_prompt_length"),
    ({"datasets": []}, "datasets: expected at least one"),
    ({"datasets": ["data.jsonl"]}, r"datasets\[0\]: expected a mapping"),
    ({"rl": "kto", "micro_batch_size": 1}, "micro_batch_size: KTO needs >= 2"),
    ({"rl": "cpo", "loss_type": "hinge", "label_smoothing": 0.1}, "label_smoothing: cpo's loss_type 'hinge' does not"),
    ({"rl": "cpo", "loss_type": "simpo"}, r"loss_type: expected one of \['sigmoid', 'hinge', 'ipo'\] for rl=cpo"),
    ({"rl_beta": 0.1, "beta": 0.2}, r"'rl_beta' \(0.1\) and 'beta' \(0.2\) both set 'beta'"),
    ({"rl": "sft", "sample_packing": True}, "sample_packing: needs attn_implementation"),
    ({"attn_implementation": "flash"}, "attn_implementation: expected one of"),
    ({"max_grad_norm": -1.0}, "max_grad_norm: expected a value >= 0"),
    ({"label_smoothing": 0.5}, r"label_smoothing: expected a value in \[0, 0.5\) for rl=dpo"),
    ({"rl": "sft", "label_smoothing": 1.5}, "label_smoothing: expected a value <= 1.0"),
    ({"rl": "kto", "label_smoothing": 0.1}, "label_smoothing: rl=kto does not use it"),
    ({"rl": "ipo", "label_smoothing": 0.1}, "label_smoothing: rl=ipo does not use it"),
    ({"loss_type": "hinge", "label_smoothing": 0.1}, "label_smoothing: loss_type 'hinge' does not use it"),
    ({"bf16": "maybe"}, "bf16: expected one of"),
    ({"orpo_alpha": 0.3}, "orpo_alpha: an alias for rl in \\['orpo'\\]; for rl=dpo set 'beta' itself"),
    ({"rl": "grpo", "reward_funcs": ["accuracy"], "epsilon": 1.0}, "epsilon: expected a value < 1.0"),
    ({"rl": "ppo", "reward_model": "rm", "cliprange": 1.0}, "cliprange: expected a value < 1.0"),
    ({"rl": "kd", "kd_divergence": "jsd", "kd_beta": 1.0}, r"kd_beta: .* expected a value in \(0, 1\)"),
    ({"kd_top_k": 0}, "kd_top_k: expected a value >= 1"),
    ({"max_steps": 0}, "max_steps: expected a value >= 1"),
    ({"save_total_limit": -1}, "save_total_limit: expected a value >= 1"),
    ({"rl": "dpo", "sample_packing": True, "attn_implementation": "flash_attention_2"},
     "sample_packing: only rl: sft and kd"),
    ({"val_set_size": 0.1, "test_datasets": [{"path": "x"}]}, "val_set_size: the held-out set is test_datasets"),
    ({"z_loss": 1e-4}, r"z_loss: rl=dpo does not read it \(only rl in \['sft'\] does\)"),
    ({"rl": "kto", "precompute_ref_log_probs": True}, "precompute_ref_log_probs: rl=kto does not read it"),
    ({"rl": "cpo", "rpo_alpha": 0.5}, "rpo_alpha: rl=cpo does not read it"),
    ({"alpha": -1.0}, r"alpha: rl=dpo does not read it \(only rl in \['cpo', 'simpo'\] does\)"),
    ({"num_generations": 4}, "num_generations: rl=dpo does not read it"),
    ({"rl": "ppo", "reward_model": "rm", "num_generations": 4}, "num_generations: rl=ppo does not read it"),
    ({"rl": "ppo", "reward_model": "rm", "reward_weights": [1.0]}, "reward_weights: rl=ppo does not read it"),
    ({"kl_coef": 0.1}, "kl_coef: rl=dpo does not read it"),
    ({"eval_batch_size": 0}, "eval_batch_size: expected a value >= 1"),
    ({"rl": "sft", "beta": 0.3}, "beta: rl=sft does not read it"),
    ({"lora_r": 8}, "lora_r: only read with adapter: lora"),
    ({"lr": 1e-5, "learning_rate": 2e-5}, r"'lr' \(1e-05\) and 'learning_rate' \(2e-05\) both set 'learning_rate'"),
    ({"datasets": "data.jsonl"}, r"datasets: expected list, got 'data.jsonl' \(str\)"),
    ({"rl": "kto", "eval_batch_size": 1}, "eval_batch_size: KTO needs >= 2"),
    ({"trust_remote_code": "yes"}, "trust_remote_code: expected"),
    ({"loss_type": ["sigmoid", "bco_pair", "sft"]}, "rpo_alpha: loss_type lists sft, the same chosen NLL term"),
    ({"loss_type": ["sigmoid", "sigmoid"]}, "loss_type: expected distinct names"),
    ({"loss_type": ["sigmoid", "dapo"]}, "loss_type: expected distinct names"),
    ({"loss_type": ["sft"], "rpo_alpha": None}, "loss_type: expected distinct names .* at least one preference"),
    ({"rl": "grpo", "reward_funcs": ["accuracy"], "loss_type": ["grpo", "dapo"]},
     "loss_type: a list of loss types \\(MPO\\) is for rl=dpo only"),
    ({"loss_type": ["sigmoid", "hinge"], "loss_weights": [1.0]}, r"loss_weights: expected 2 numbers >= 0"),
    ({"loss_weights": [0.5, 0.5]}, r"loss_weights: expected 1 numbers >= 0 \(one per loss_type: \['sigmoid'\]\)"),
    ({"loss_type": ["sigmoid", "hinge"], "label_smoothing": 0.1}, "label_smoothing: loss_type 'hinge' does not use it"),
    ({"rl": "cpo", "loss_weights": [1.0]}, "loss_weights: rl=cpo does not read it"),
    ({"rl": "simpo", "use_weighting": True}, "use_weighting: rl=simpo does not read it"),
    ({"rl": "cpo", "f_divergence_type": "js_divergence"}, "f_divergence_type: rl=cpo does not read it"),
    ({"rl": "kto", "loss_type": "sigmoid"},
     r"loss_type: expected one of \['kto', 'apo_zero_unpaired', 'bco'\] for rl=kto"),
    ({"rl": "kto", "micro_batch_size": 1}, "micro_batch_size: KTO needs >= 2"),
    ({"rl": "cpo", "loss_type": "hinge", "label_smoothing": 0.1}, "label_smoothing: cpo's loss_type 'hinge' does not"),
    ({"rl": "cpo", "loss_type": "simpo"}, r"loss_type: expected one of \['sigmoid', 'hinge', 'ipo'\] for rl=cpo"),
    ({"f_divergence_type": "kl"}, "f_divergence_type: expected one of"),
    ({"f_alpha_divergence_coef": 0.5}, "f_alpha_divergence_coef: only read with f_divergence_type: alpha_divergence"),
    ({"loss_type": ["sigmoid", "aot"], "f_divergence_type": "forward_kl"},
     "f_divergence_type: loss_type 'aot' compares log ratios only"),
])
def test_bad_config_names_the_key(bad, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({**BASE, **bad})


@pytest.mark.parametrize("extra", [{"rl": "dpo", "loss_type": "robust"}, {"rl": "dpo"}, {"rl": "cpo"},
                                   {"rl": "simpo"}, {"rl": "dpo", "loss_type": ["sigmoid", "robust"]}])
def test_label_smoothing_where_the_loss_reads_it(extra):
    assert config_from_dict({**BASE, **extra, "label_smoothing": 0.1}).label_smoothing == 0.1


def test_kto_apo_zero_unpaired_takes_single_row_batches():
    config = config_from_dict({**BASE, "rl": "kto", "loss_type": "apo_zero_unpaired", "micro_batch_size": 1})
    assert config.effective_loss_type == "apo_zero_unpaired"
    assert config_from_dict({**BASE, "rl": "kto"}).effective_loss_type == "kto"


def test_mpo_loss_type_list_for_dpo():
    config = config_from_dict({**BASE, "loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0],
                               "rpo_alpha": None})
    assert config.dpo_loss_types == ["sigmoid", "bco_pair", "sft"] and config.loss_weights == [0.8, 0.2, 1.0]
    assert config_from_dict(BASE).dpo_loss_types == ["sigmoid"]


def test_missing_base_model():
    with pytest.raises(ConfigError, match="base_model"):
        config_from_dict({"datasets": [{"path": "x"}]})


def test_overrides_parse_as_yaml_values():
    assert parse_overrides(["--beta", "0.2", "--adapter=lora", "--max-steps", "3", "--bf16", "false"]) == {
        "beta": 0.2, "adapter": "lora", "max_steps": 3, "bf16": False}
    with pytest.raises(ConfigError, match="missing value"):
        parse_overrides(["--beta"])


def test_load_config_resolves_paths_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**BASE, "datasets": [{"path": "train.jsonl"}]}))
    (tmp_path / "train.jsonl").write_text(DEMO_TRAIN.read_text())
    config = load_config(path, ["--beta", "0.25"])
    assert config.beta == 0.25
    assert config.datasets[0]["path"] == str((tmp_path / "train.jsonl").resolve())


def test_cli_reports_config_errors_without_traceback(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**BASE, "warmup_step": 3}))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'warmup_step'; did you mean 'warmup_steps'" in err and "Traceback" not in err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_grad_norm_bf16_and_sft_label_smoothing():
    assert config_from_dict({**BASE, "max_grad_norm": 0}).max_grad_norm is None  # 0: no clipping
    assert config_from_dict({**BASE, "bf16": False}).bf16 is False
    assert config_from_dict({**BASE, "learning_rate": "3e-4"}).learning_rate == 3e-4
    assert config_from_dict({**BASE, "rl": "sft", "label_smoothing": 0.6}).label_smoothing == 0.6
    assert config_from_dict({**BASE, "rl": "sft", "sft_label_smoothing": 0.2}).label_smoothing == 0.2


def test_cli_override_wins_over_any_alias_in_the_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    data = [{"path": str(DEMO_TRAIN)}]
    path.write_text(yaml.safe_dump({**BASE, "datasets": data, "rl": "orpo", "orpo_alpha": 0.5, "lr": 1e-4}))
    config = load_config(path, ["--beta", "0.2", "--learning-rate", "3e-4", "--bf16", "true"])
    assert (config.beta, config.learning_rate, config.bf16) == (0.2, 3e-4, True)
    assert load_config(path, ["--rl_beta", "0.3"]).beta == 0.3
    path.write_text(yaml.safe_dump({**BASE, "rl": "orpo", "datasets": data, "rl_beta": 0.5, "orpo_alpha": 0.4}))
    with pytest.raises(ConfigError, match="both set 'beta'"):
        load_config(path, [])


def test_missing_local_dataset_path_names_the_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**BASE, "datasets": [{"path": str(DEMO_TRAIN)}, {"path": "data/nope.jsonl"}]}))
    with pytest.raises(ConfigError, match=r"datasets\[1\].path: local file or folder not found: 'data/nope.jsonl'"):
        load_config(path)
    path.write_text(yaml.safe_dump({**BASE, "datasets": [{"path": "org/hub-dataset"}]}))
    assert load_config(path).datasets == [{"path": "org/hub-dataset"}]  # a hub id is left to load_dataset


def test_cli_names_a_missing_base_model(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**BASE, "base_model": "./no-such-model", "datasets": [{"path": str(DEMO_TRAIN)}]}))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "fusedrl: error: base_model: local model folder not found: './no-such-model'" in err
    assert "Traceback" not in err


def test_label_smoothing_changes_the_sft_loss(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    losses = []
    for i, smoothing in enumerate((0.0, 0.0, 0.3)):
        raw = train_config(model_dir, tmp_path / f"out{i}", "sft", max_steps=1, label_smoothing=smoothing)
        losses.append(train(config_from_dict(raw)).eval_before["loss"])
    assert losses[0] == pytest.approx(losses[1], abs=1e-6) and abs(losses[2] - losses[0]) > 1e-3


def test_cli_names_missing_kd_targets_before_loading_a_model(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**BASE, "rl": "kd", "base_model": "some/hub-model",
                                    "datasets": [{"path": "outputs/kd_targets"}]}))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "datasets[0].path: teacher targets not found: 'outputs/kd_targets'" in err and "kd-extract" in err


def test_fusedrl_env_reports_versions_devices_and_kernel_paths(capsys):
    """``fusedrl env`` prints one line per fact a bug report needs, including the backend ``auto`` takes."""
    import torch

    assert main(["env"]) == 0
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    report = {name: value.strip() for name, value in lines.items()}
    assert report["torch"] == torch.__version__ and report["fusedrl"] == "0.1.0"
    assert report["transformers"] != "not installed" and report["liger-kernel"]
    expected = "triton (on cuda tensors)" if torch.cuda.is_available() else "torch (on cpu tensors)"
    assert report["kernel_backend auto"] == expected
    assert main(["env", "--verbose"]) == 2


def test_fsdp_gather_for_generation_is_read_only_by_sharded_online_runs(tmp_path):
    """Switching off the gathered sampling means nothing without fsdp, or for an algorithm that does not sample."""
    model_dir = tmp_path / "m"
    with pytest.raises(ConfigError, match="fsdp_gather_for_generation: only read with fsdp: true"):
        config_from_dict(train_config(model_dir, tmp_path / "a", "grpo", reward_funcs=["accuracy"],
                                      fsdp_gather_for_generation=False))
    with pytest.raises(ConfigError, match=r"fsdp_gather_for_generation: rl=sft does not read it"):
        config_from_dict(train_config(model_dir, tmp_path / "b", "sft", fsdp=True, fsdp_gather_for_generation=False))
    config = config_from_dict(train_config(model_dir, tmp_path / "c", "grpo", reward_funcs=["accuracy"], fsdp=True,
                                           fsdp_gather_for_generation=False))
    assert config.fsdp_gather_for_generation is False
