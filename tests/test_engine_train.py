"""End-to-end training of every offline algorithm on a tiny random model."""
import json

import pytest
import torch
import yaml

from engine_fixtures import save_tiny_model, train_config
from fusedrl.engine.algorithms import build_algorithm
from fusedrl.engine.batches import fixed_batches
from fusedrl.engine.config import config_from_dict
from fusedrl.engine.distributed import pick_device
from fusedrl.engine.trainer import train
from fusedrl.engine.training_data import load_training_data

ALGOS = ["sft", "dpo", "ipo", "cpo", "simpo", "orpo", "kto", "rm", "prm", "kd"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.mark.parametrize("rl", ALGOS)
def test_training_lowers_held_out_loss(rl, model_dir, tmp_path):
    config = config_from_dict(train_config(model_dir, tmp_path / "run", rl))
    result = train(config)
    assert result.step == config.max_steps
    assert result.eval_after["loss"] < result.eval_before["loss"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    seen = [r["num_input_tokens_seen"] for r in records if r["split"] == "train"]
    assert len(seen) == config.max_steps and seen[0] > 0 and all(b > a for a, b in zip(seen, seen[1:]))
    assert all(r["tokens_per_second"] > 0 for r in records if r["split"] == "train")
    assert (tmp_path / "run" / "final" / "config.json").is_file()


@pytest.mark.parametrize("loss_type", ["apo_zero_unpaired", "bco"])
def test_kto_without_the_kl_baseline_trains_on_single_rows(loss_type, model_dir, tmp_path):
    """Only KTO's own loss pairs rows for its KL estimate: the other loss types collate no mismatched pairs and
    train and evaluate one row at a time."""
    config = config_from_dict(train_config(model_dir, tmp_path / "run", "kto", loss_type=loss_type,
                                           micro_batch_size=1, max_steps=2))
    result = train(config)
    assert result.step == 2 and "kl" not in result.eval_after
    data = load_training_data(config, build_algorithm(config, pick_device()).tokenizer, "kto")
    assert not any(key.startswith("kl_") for key in data.collate([data.train[0]]))


@pytest.mark.parametrize("rl, extra", [(rl, {}) for rl in ALGOS] + [("dpo", {"use_weighting": True}),
                                                                     ("kto", {"loss_type": "apo_zero_unpaired"})],
                         ids=ALGOS + ["dpo-wpo", "kto-apo_zero_unpaired"])
def test_fused_path_matches_eager_logits(rl, extra, model_dir, tmp_path):
    """Same batch through the chunked kernel and through full logits: same loss and parameter grads."""
    results = []
    for backend in ("torch", "eager"):
        torch.manual_seed(0)
        config = config_from_dict(train_config(model_dir, tmp_path / backend, rl, kernel_backend=backend, **extra))
        algorithm = build_algorithm(config, pick_device())
        data = load_training_data(config, algorithm.tokenizer, algorithm.data_kind)
        batch = algorithm.to_device(fixed_batches(data.train, 2, data.collate)[0])
        loss, metrics = algorithm.loss(batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in algorithm.model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), metrics, grads))
    (loss_a, metrics_a, grads_a), (loss_b, metrics_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, atol=1e-5, rtol=1e-4)
    assert metrics_a.keys() == metrics_b.keys()
    assert ("policy_weights" in metrics_a) == bool(extra.get("use_weighting"))
    assert ("kl" in metrics_a) == (rl == "kto" and "loss_type" not in extra)  # apo_zero_unpaired: no KL pass
    for key in metrics_a:
        assert metrics_a[key] == pytest.approx(metrics_b[key], rel=1e-4, abs=1e-5), key
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-5, rtol=1e-4, msg=name)


def test_pairwise_loss_options_reach_the_loss(model_dir, tmp_path):
    """DPO's f_divergence_type, use_weighting, ld_alpha and AOT loss types, CPO's loss types and AlphaPO's alpha
    (CPO and SimPO) each change the loss of the same batch (the policy is moved off the reference first: at the
    reference every DPO variant gives ln 2)."""
    dpo = {"rpo_alpha": 0.0}
    cases = {"plain": ("dpo", dpo), "js": ("dpo", {**dpo, "f_divergence_type": "js_divergence"}),
             "wpo": ("dpo", {**dpo, "use_weighting": True}),
             "aot_unpaired": ("dpo", {**dpo, "loss_type": "aot_unpaired"}), "ld": ("dpo", {**dpo, "ld_alpha": 0.3}),
             "cpo": ("cpo", {}), "cpo-hinge": ("cpo", {"loss_type": "hinge"}), "cpo-ipo": ("cpo", {"loss_type": "ipo"}),
             "cpo-alphapo": ("cpo", {"alpha": 0.05}), "simpo": ("simpo", {}), "alphapo": ("simpo", {"alpha": -1.0})}
    losses = {}
    for name, (rl, extra) in cases.items():
        torch.manual_seed(0)
        config = config_from_dict(train_config(model_dir, tmp_path / name, rl, **extra))
        algorithm = build_algorithm(config, pick_device())
        data = load_training_data(config, algorithm.tokenizer, algorithm.data_kind)
        batch = algorithm.to_device(fixed_batches(data.train, 4, data.collate)[0])
        with torch.no_grad():
            for param in algorithm.model.parameters():
                param.add_(0.05 * torch.randn_like(param))
            losses[name] = float(algorithm.loss(batch)[0])
    assert len({round(v, 6) for v in losses.values()}) == len(losses), losses


def test_eval_command_scores_a_model_as_training_does(model_dir, tmp_path, capsys):
    """``fusedrl eval`` on the starting model gives the run's held-out metrics before training, and on its
    final/ (with the starting model as ref_model, the run's reference) those after training."""
    from fusedrl.engine.cli import main as cli_main
    from fusedrl.engine.trainer import evaluate_config

    raw = train_config(model_dir, tmp_path / "run", "dpo", max_steps=2)
    result = train(config_from_dict(raw))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    final = tmp_path / "run" / "final"
    for extra, expected in (([], result.eval_before), (["--base_model", str(final), "--ref_model", str(model_dir)],
                                                       result.eval_after)):
        assert cli_main(["eval", str(config), "--out", str(tmp_path / "eval.json"), *extra]) == 0
        scored = json.loads((tmp_path / "eval.json").read_text())
        assert scored.keys() - {"base_model", "rl"} == expected.keys()
        for key, value in expected.items():
            assert scored[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    table = capsys.readouterr().out
    assert "\nheld-out metric          final\n" in table
    assert f"\nrewards/margins     {result.eval_after['rewards/margins']:10.4f}\n" in table
    with pytest.raises(ValueError, match="fusedrl eval needs a held-out set"):
        evaluate_config(config_from_dict({**raw, "test_datasets": []}))


@pytest.mark.parametrize("rl", ["rm", "prm"])
def test_a_trained_reward_model_is_read_back_with_its_value_head(rl, model_dir, tmp_path):
    """A ``base_model`` folder with a ``value_head.safetensors`` (a run's final/) keeps that head: evaluating it
    gives the run's held-out metrics after training."""
    from fusedrl.engine.trainer import evaluate_config

    raw = train_config(model_dir, tmp_path / "run", rl, max_steps=3)
    result = train(config_from_dict(raw))
    scored = evaluate_config(config_from_dict({**raw, "base_model": str(tmp_path / "run" / "final")}))
    assert scored.keys() == result.eval_after.keys()
    for key, value in result.eval_after.items():
        assert scored[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("option, base", [
    ({"precompute_ref_log_probs": True}, {}),
    ({"gradient_checkpointing": True}, {}),
    ({"precompute_ref_log_probs": True}, {"ld_alpha": 0.5}),
    # held-out batches read a copy of BCO's running reward mean: evaluating every step leaves training as it was
    ({"eval_steps": 1}, {"loss_type": "bco_pair", "eval_steps": 0}),
    ({"eval_steps": 1}, {"rl": "kto", "loss_type": "bco", "eval_steps": 0}),
], ids=["precomputed_reference", "gradient_checkpointing", "precomputed_reference_ld_dpo", "evaluated_bco_pair",
        "evaluated_kto_bco"])
def test_option_leaves_the_loss_curve_unchanged(option, base, model_dir, tmp_path):
    base = dict(base)
    raw = train_config(model_dir, tmp_path / "plain", base.pop("rl", "dpo"), max_steps=3, **base)
    plain = train(config_from_dict(raw))
    raw.update(output_dir=str(tmp_path / "option"), **option)
    changed = train(config_from_dict(raw))
    torch.testing.assert_close(torch.tensor(changed.train_losses), torch.tensor(plain.train_losses),
                               atol=1e-5, rtol=1e-5)
    assert changed.eval_after["rewards/margins"] == pytest.approx(plain.eval_after["rewards/margins"], abs=1e-5)


def test_precomputed_reference_releases_the_reference_model(model_dir, tmp_path):
    """Once every row carries its reference logps the reference model is dropped (as TRL): no memory kept."""
    from fusedrl.engine.training_data import load_training_data

    config = config_from_dict(train_config(model_dir, tmp_path / "run", "dpo", precompute_ref_log_probs=True))
    algorithm = build_algorithm(config, pick_device())
    assert algorithm.reference is not None
    data = algorithm.prepare_data(load_training_data(config, algorithm.tokenizer, algorithm.data_kind))
    assert algorithm.reference is None
    assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(data.train.column_names)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_steps_log_their_peak_memory(model_dir, tmp_path):
    """On a GPU every step logs ``max_memory_gib``, the step's peak allocation on any rank."""
    train(config_from_dict(train_config(model_dir, tmp_path / "run", "sft", max_steps=2)))
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    peaks = [r["max_memory_gib"] for r in steps if r["split"] == "train"]
    assert len(peaks) == 2 and all(p > 0 for p in peaks)
