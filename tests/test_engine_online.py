"""Online RL (GRPO, RLOO, online DPO and PPO) on tiny random models: rollouts, rewards, losses, metrics against
eager, training."""
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from engine_fixtures import save_tiny_model, train_config
from fusedrl.engine.algorithms import build_algorithm
from fusedrl.engine.batches import fixed_batches
from fusedrl.engine.cli import main as cli_main
from fusedrl.engine.config import ConfigError, config_from_dict
from fusedrl.engine.models import RewardModel, load_causal_lm, load_weights
from fusedrl.engine.optim import build_optimizer
from fusedrl.engine.rewards import (RewardFunction, RewardFunctionError, accuracy, call_reward_function,
                                    extract_answer, load_reward_function)
from fusedrl.engine.rollout import Generator, HFGenerator, Rollout, SamplingParams, completion_masks
from fusedrl.engine.distributed import pick_device
from fusedrl.engine.trainer import train
from fusedrl.engine.training_data import load_training_data
from tokenizer_fixture import tiny_tokenizer

LOW_IDS = 100  # the toy task: reward = fraction of completion tokens with an id below this
TOY_REWARDS = f'''
def low_ids(prompts, completions, completion_ids, **columns):
    return [sum(i < {LOW_IDS} for i in ids) / len(ids) for ids in completion_ids]


def constant(prompts, completions, **columns):
    return [1.0] * len(completions)


def every_other(prompts, completions, **columns):
    return [2.0 if i % 2 == 0 else None for i in range(len(completions))]


def fussy(prompts, completions, **columns):
    return [len(p) / ("France" not in p) for p in prompts]


def picky(prompts, completions, **columns):
    for completion in completions:
        if "boom" in completion:
            raise ValueError("cannot score this one")
    return [0.0] * len(completions)
'''
PROMPTS = ["What is two plus two?", "Name a colour.", "Say hello.", "Write a word about the sea.",
           "What is the capital of France?", "Count to three.", "Is the sky blue?", "Give me a number."]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny policy, a tiny reward model, a prompt dataset with a ``solution`` column and the toy rewards."""
    root = tmp_path_factory.mktemp("online")
    model_dir = save_tiny_model(root / "model")
    reward_model = RewardModel(load_causal_lm(str(save_tiny_model(root / "rm-backbone", seed=1))))
    reward_model.save_pretrained(str(root / "rm"))
    tiny_tokenizer().save_pretrained(root / "rm")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "solution": str(i)}) + "\n" for i, p in enumerate(PROMPTS)))
    (root / "toy_rewards.py").write_text(TOY_REWARDS)
    return {"model": model_dir, "rm": root / "rm", "prompts": prompts, "rewards": root / "toy_rewards.py"}


def online_config(files, out, rl, **overrides):
    """A validated GRPO / RLOO / PPO config on the tiny model and the prompt file."""
    raw = train_config(files["model"], out, rl, datasets=[{"path": str(files["prompts"])}],
                       test_datasets=[{"path": str(files["prompts"])}], max_completion_length=8,
                       temperature=1.0, num_sample_generations=0, local_rollout_forward_batch_size=8)
    if rl in ("grpo", "rloo"):
        raw.update(reward_funcs=[f"{files['rewards']}:low_ids"], num_generations=4)
    else:
        raw.update(reward_model=str(files["rm"]))
    raw.update(overrides)
    return config_from_dict(raw)


def build(config):
    algorithm = build_algorithm(config, pick_device())
    data = load_training_data(config, algorithm.tokenizer, algorithm.data_kind)
    return algorithm, algorithm.to_device(fixed_batches(data.train, config.micro_batch_size, data.collate)[0])


def optimizer_step(algorithm, batch, lr):
    optimizer = build_optimizer(algorithm.model, lr, 0.0, (0.9, 0.999), 1e-8)
    loss, _ = algorithm.loss(batch)
    loss.backward()
    optimizer.step()
    return loss.item()


def eager_logps(model, batch, temperature):
    """Full-logits reference: ``[B, T]`` logprobs of the labels and entropy, at ``temperature``."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"]).logits.float() / temperature
    logp = F.log_softmax(logits, -1)
    labels = batch["labels"].clamp(min=0)
    token = torch.where(batch["labels"] != -100, logp.gather(-1, labels[..., None]).squeeze(-1), 0.0)
    entropy = -(logp.exp() * logp).sum(-1)
    return token, entropy


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum()


# ---- rollouts ----------------------------------------------------------------------------------

def test_completion_masks_stop_at_the_first_eos():
    ids = torch.tensor([[5, 3, 7, 3], [5, 6, 7, 8], [3, 9, 9, 9]])
    mask, truncated = completion_masks(ids, [3])
    assert mask.tolist() == [[True, True, False, False], [True] * 4, [True, False, False, False]]
    assert truncated.tolist() == [False, True, False]


def test_rollout_masks_and_labels(files):
    """Near-uniform sampling over the tiny vocabulary: some rows end with EOS, some are cut at max length."""
    model = load_causal_lm(str(files["model"]))
    tokenizer = tiny_tokenizer()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    generator = HFGenerator(model, SamplingParams(temperature=50.0, max_completion_length=40), [eos], pad)
    prompt_ids = torch.tensor([[pad, pad, 10, 11], [12, 13, 14, 15]])
    prompt_mask = (prompt_ids != pad).long()
    model.train()
    rollout = generator.generate(prompt_ids, prompt_mask, num_generations=64)
    assert model.training and model.config.use_cache is False
    assert rollout.rows == 128 and torch.equal(rollout.prompt_ids[:64], prompt_ids[:1].expand(64, -1))
    ended = ~rollout.truncated
    assert ended.any() and rollout.truncated.any()
    for ids, mask, cut in zip(rollout.completion_ids, rollout.completion_mask, rollout.truncated):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()
        assert (ids[n:] == pad).all()
        assert (eos not in ids[:n - 1].tolist()) and (ids[n - 1] == eos) != bool(cut)
        if cut:
            assert n == 40
    seqs = rollout.sequences()
    p = prompt_ids.shape[1]
    assert (seqs["labels"][:, :p - 1] == -100).all()
    completion_labels = seqs["labels"][:, p - 1:-1]
    assert torch.equal(completion_labels, torch.where(rollout.completion_mask, rollout.completion_ids, -100))
    assert torch.equal(seqs["position_ids"][0, 2:4], torch.tensor([0, 1]))


# ---- rewards -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("The answer is \\boxed{1,234}.", "1,234"),
    ("so we get \\boxed{\\frac{1}{2}} in the end", "\\frac{1}{2}"),
    ("Let me think. The answer is 42.", "42"),
    ("The answer is 42, since 40 + 2 = 42", "42"),
    ("Here is the answer: 7 + 5 = 12.", "12"),
    ("17 + 25 = 42", "42"),
    ("I think it is 7, no wait, 8.", "8"),
    ("The final answer is: Paris.", "Paris"),
    ("  -3 ", "-3"),
    ("blue", "blue"),
])
def test_final_answer_extraction(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("completion, solution, score", [
    ("17 + 25 = 42.", "42", 1.0),
    ("The answer is 1,234.", "1234", 1.0),
    ("\\boxed{0.5}", "1/2", 1.0),
    ("so \\boxed{\\frac{3}{4}}", "0.75", 1.0),
    ("It is 41", "42", 0.0),
    ("The answer is Paris.", "paris", 1.0),
    ("The capital is  Rome", "Paris", 0.0),
    ("", "3", 0.0),
])
def test_accuracy_reward(completion, solution, score):
    assert accuracy(["q"], [completion], solution=[solution]) == [score]
    assert accuracy(["q"], [[{"role": "assistant", "content": completion}]], answer=[solution]) == [score]


def test_accuracy_leaves_out_rows_without_a_reference():
    assert accuracy(["q", "q"], ["4", "4"], solution=["4", None]) == [1.0, None]


def test_reward_functions_load_by_name_dotted_path_and_file(files, monkeypatch):
    monkeypatch.chdir(files["rewards"].parent)
    assert load_reward_function("fusedrl.engine.rewards.accuracy").fn is accuracy
    assert load_reward_function("fusedrl.engine.rewards:accuracy").name == "accuracy"
    toy = load_reward_function("toy_rewards.py:low_ids")
    assert toy.name == "low_ids" and toy.fn([], ["a"], completion_ids=[[1, 200]]) == [0.5]
    fmt = load_reward_function("format", format_pattern=r"^\d+$")
    assert fmt.fn(["q", "q"], ["12", "x12"]) == [1.0, 0.0]
    assert load_reward_function("length", max_completion_length=4).fn(["q"], ["ab"], completion_ids=[[1, 2]]) == [-0.5]
    overlong = load_reward_function("soft_overlong", max_completion_length=10, soft_punish_cache=4)
    lengths = [3, 6, 7, 9, 10, 12]  # free up to 10 - 4 = 6 tokens, then -1/4 a token down to -1
    assert overlong.fn(["q"] * 6, ["a"] * 6, completion_ids=[[0] * n for n in lengths]) == [0, 0, -0.25, -0.75, -1, -1]
    for cache in (None, 11):
        with pytest.raises(ValueError, match="'soft_overlong' needs soft_punish_cache in \\[1, max_completion_length"):
            load_reward_function("soft_overlong", max_completion_length=10, soft_punish_cache=cache)
    for spec, message in [("acuracy", "expected one of"), ("missing.py:fn", "not found"),
                          ("toy_rewards.py:nope", "has no function 'nope'"),
                          ("fusedrl.nothing:fn", "cannot import module")]:
        with pytest.raises(ValueError, match=message):
            load_reward_function(spec)


def test_reward_function_errors_name_the_function_and_the_sample(files, monkeypatch):
    monkeypatch.chdir(files["rewards"].parent)
    picky = load_reward_function("toy_rewards.py:picky")
    prompts, completions = ["first prompt", "second prompt", "third prompt"], ["fine", "it goes boom", "ok"]
    with pytest.raises(RewardFunctionError, match=r"'picky' raised ValueError: cannot score this one at "
                                                  r"toy_rewards.py:\d+ on sample 1 \(prompt 'second prompt', "
                                                  r"completion 'it goes boom'\)"):
        call_reward_function(picky, prompts, completions, {})
    short = RewardFunction("short", lambda prompts, completions, **_: [1.0])
    with pytest.raises(RewardFunctionError, match="'short': expected a list of 3 rewards .* got 1 values"):
        call_reward_function(short, prompts, completions, {})
    wordy = RewardFunction("wordy", lambda prompts, completions, **_: [1.0, "good", 0.0])
    with pytest.raises(RewardFunctionError, match="'wordy': expected a finite number or None, got 'good' for "
                                                  "sample 1 \\(prompt 'second prompt'"):
        call_reward_function(wordy, prompts, completions, {})


def test_a_raising_reward_function_fails_the_run_with_its_message(files, tmp_path, capsys):
    raw = train_config(files["model"], tmp_path / "run", "grpo", datasets=[{"path": str(files["prompts"])}],
                       test_datasets=[], reward_funcs=[f"{files['rewards']}:fussy"], num_generations=2,
                       max_completion_length=4, micro_batch_size=len(PROMPTS), max_steps=1)
    config_path = tmp_path / "run.yaml"
    config_path.write_text(json.dumps(raw))
    assert cli_main(["train", str(config_path)]) == 2
    err = capsys.readouterr().err
    assert "reward function 'fussy' raised ZeroDivisionError: division by zero at toy_rewards.py:" in err
    assert "(prompt 'What is the capital of France?', completion '" in err and "Traceback" not in err


def test_reward_weights_and_none(files, tmp_path):
    rewards = str(files["rewards"])
    config = online_config(files, tmp_path, "grpo", reward_funcs=[f"{rewards}:constant", f"{rewards}:every_other"],
                           reward_weights=[1.0, 0.5], beta=0.0)
    algorithm, batch = build(config)
    metrics = algorithm.updates([batch])[0][0]["rollout_metrics"]
    assert metrics["rewards/constant/mean"] == 1.0 and metrics["rewards/every_other/mean"] == 2.0
    assert metrics["reward"] == pytest.approx(1.0 + 0.5 * 2.0 / 2)


def test_soft_overlong_scores_the_rollout_by_its_lengths(files, tmp_path):
    """The built-in soft_overlong reads each completion's tokens: with max_completion_length 8 and a cache of 4,
    a completion of n tokens scores min(0, (4 - n) / 4)."""
    config = online_config(files, tmp_path, "grpo", reward_funcs=["soft_overlong"], soft_punish_cache=4, beta=0.0)
    algorithm, batch = build(config)
    micro = algorithm.updates([batch])[0][0]
    lengths = (micro["labels"] != -100).sum(-1).float()
    expected = ((4 - lengths) / 4).clamp(max=0.0)
    assert micro["rollout_metrics"]["rewards/soft_overlong/mean"] == pytest.approx(float(expected.mean()), abs=1e-6)
    assert float(expected.min()) < 0  # some completions reach the penalised tail


# ---- GRPO --------------------------------------------------------------------------------------

def test_grpo_step_lowers_its_loss_on_the_rollout(files, tmp_path):
    config = online_config(files, tmp_path, "grpo", num_iterations=2)
    algorithm, batch = build(config)
    micro_batch = algorithm.updates([batch])[0][0]
    before = optimizer_step(algorithm, micro_batch, lr=1e-2)
    after, _ = algorithm.loss(micro_batch)
    assert after.item() < before - 1e-3


@pytest.mark.parametrize("quantile, deepseek", [(1.0, False), (0.3, False), (1.0, True)],
                         ids=["plain", "entropy_quantile", "deepseek_v32"])
def test_grpo_metrics_match_an_eager_computation(files, tmp_path, quantile, deepseek):
    """Advantages, kl, entropy, clip ratios and the loss from full logits on the same rollout after an update;
    with ``top_entropy_quantile`` 0.3 the policy term counts on the 30% highest-entropy tokens only; with
    DeepSeek-V3.2's options, negative-advantage completions that drifted by more than 0 lose their policy term
    (off_policy_mask_threshold) and the KL term is weighted by the ratio (use_bias_correction_kl)."""
    g, epsilon, beta, temperature = 4, 0.05, 0.1, 0.8
    v32 = dict(off_policy_mask_threshold=0.0, use_bias_correction_kl=True) if deepseek else {}
    config = online_config(files, tmp_path, "grpo", num_iterations=2, epsilon=epsilon, beta=beta,
                           temperature=temperature, num_generations=g, micro_batch_size=2,
                           top_entropy_quantile=quantile, **v32)
    algorithm, batch = build(config)
    updates = algorithm.updates([batch])
    micro = updates[0][0]
    mask = micro["labels"] != -100
    old, _ = eager_logps(algorithm.model, micro, temperature)
    torch.testing.assert_close(micro["old_logps"], old, atol=1e-5, rtol=1e-4)
    ref, _ = eager_logps(algorithm.reference, micro, temperature)
    torch.testing.assert_close(micro["ref_logps"], ref, atol=1e-5, rtol=1e-4)

    ids = [row[row != -100] for row in micro["labels"]]
    rewards = torch.tensor([float((r < LOW_IDS).float().mean()) for r in ids]).view(-1, g)
    expected_adv = ((rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)).flatten()
    torch.testing.assert_close(micro["advantages"], expected_adv, atol=1e-5, rtol=1e-4)
    assert micro["rollout_metrics"]["reward"] == pytest.approx(float(rewards.mean()), abs=1e-6)

    optimizer_step(algorithm, micro, lr=3e-2)
    loss, metrics = algorithm.loss(micro)
    logp, entropy = eager_logps(algorithm.model, micro, temperature)
    ratio = torch.exp(torch.where(mask, logp - old, 0.0))
    adv = expected_adv[:, None]
    kl = torch.exp(ref - logp) - (ref - logp) - 1
    kept = entropy >= torch.quantile(entropy[mask], 1 - quantile)
    if deepseek:
        drift = ((old - logp) * mask).sum(-1) / mask.sum(-1)
        on_policy = (expected_adv >= 0) | (drift <= 0.0)
        assert not on_policy.all()
        kept = kept & on_policy[:, None]
        kl = kl * ratio
    per_token = -torch.minimum(ratio * adv, ratio.clamp(1 - epsilon, 1 + epsilon) * adv) * kept + beta * kl
    low, high = (ratio < 1 - epsilon) & (adv < 0), (ratio > 1 + epsilon) & (adv > 0)
    expected = {
        "loss": ((per_token * mask).sum(1) / mask.sum(1)).mean(),
        "kl": masked_mean(kl / ratio if deepseek else kl, mask), "entropy": masked_mean(entropy, mask),
        "clip_ratio/low_mean": masked_mean(low.float(), mask), "clip_ratio/high_mean": masked_mean(high.float(), mask),
        "clip_ratio/region_mean": masked_mean((low | high).float(), mask),
    }
    assert expected["clip_ratio/region_mean"] > 0 and expected["kl"] > 0
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(float(value), abs=1e-5, rel=1e-4), key


def test_beta_zero_loads_no_reference_model(files, tmp_path, monkeypatch):
    import fusedrl.engine.algorithms.base as base

    monkeypatch.setattr(base, "frozen_copy", lambda model: pytest.fail("beta 0 must not copy a reference"))
    algorithm, batch = build(online_config(files, tmp_path, "grpo", beta=0.0))
    assert algorithm.reference is None
    monkeypatch.setattr(algorithm, "reference_forward", lambda *a, **k: pytest.fail("no reference pass at beta 0"))
    micro = algorithm.updates([batch])[0][0]
    _, metrics = algorithm.loss(micro)
    assert "ref_logps" not in micro and "kl" not in metrics


class EveryOtherRowEnds(Generator):
    """A stand-in engine: even rows stop after one token and EOS, odd rows run to the length limit."""

    def __init__(self, eos: int, length: int):
        self.eos, self.length = eos, length

    def generate(self, prompt_ids, prompt_mask, num_generations):
        rows = prompt_ids.shape[0] * num_generations
        ids = torch.full((rows, self.length), 7)
        ids[0::2, 1] = self.eos
        mask, truncated = completion_masks(ids, [self.eos])
        return Rollout(prompt_ids.repeat_interleave(num_generations, 0),
                       prompt_mask.repeat_interleave(num_generations, 0), torch.where(mask, ids, 0), mask, truncated)


@pytest.mark.parametrize("masked", [False, True])
def test_mask_truncated_completions(files, tmp_path, masked):
    config = online_config(files, tmp_path, "grpo", mask_truncated_completions=masked, max_completion_length=3)
    algorithm, batch = build(config)
    algorithm.generator = EveryOtherRowEnds(algorithm.tokenizer.eos_token_id, 3)
    micro = algorithm.updates([batch])[0][0]
    labelled = (micro["labels"] != -100).sum(1)
    assert micro["rollout_metrics"]["completions/clipped_ratio"] == 0.5
    assert micro["rollout_metrics"]["completions/mean_length"] == 2.5
    assert labelled[0::2].tolist() == [2] * 4 and labelled[1::2].tolist() == [0 if masked else 3] * 4
    loss, _ = algorithm.loss(micro)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("loss_type, extra", [
    ("grpo", {}), ("cispo", {}), ("sapo", {}), ("vespo", {}), ("luspo", {"importance_sampling_level": "sequence"}),
    ("grpo", {"multi_objective_aggregation": "normalize_then_sum"}),
], ids=["grpo", "cispo", "sapo", "vespo", "luspo", "gdpo"])
def test_grpo_raises_the_toy_reward(files, tmp_path, loss_type, extra):
    """A few dozen steps: the fraction of low-id tokens in the completions climbs clearly above its start, with
    the clipped surrogate, CISPO's and VESPO's weighted policy gradients, SAPO's soft gate, LUSPO's
    length-weighted sequence loss and GDPO's per-reward normalisation."""
    config = online_config(files, tmp_path / "run", "grpo", max_steps=30, learning_rate=2e-2, beta=0.0,
                           num_generations=8, micro_batch_size=2, test_datasets=[], num_sample_generations=3,
                           loss_type=loss_type, **extra)
    result = train(config)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward"] for r in records if r["split"] == "train"]
    assert result.step == 30 and len(rewards) == 30
    start, end = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert end > start + 0.3, rewards
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and "low_ids=" in samples[0]["text"]


@pytest.mark.parametrize("rl", ["grpo", "rloo"])
def test_num_generations_eval_samples_fewer_completions_for_held_out_prompts(files, tmp_path, rl):
    config = online_config(files, tmp_path, rl, num_generations=4, num_generations_eval=2, micro_batch_size=2,
                           max_steps=1)
    algorithm, batch = build(config)
    algorithm.model.train()  # as the trainer's loop: training rollouts sample num_generations
    assert algorithm.updates([batch])[0][0]["input_ids"].shape[0] == 2 * 4
    algorithm.model.eval()
    assert [m["input_ids"].shape[0] for m in algorithm.evaluation_batches(batch)] == [2 * 2]
    result = train(online_config(files, tmp_path / "run", rl, num_generations=4, num_generations_eval=2,
                                 max_steps=1))
    assert result.step == 1 and "reward" in result.eval_after


# ---- RLOO --------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_iterations", [1, 2])
def test_rloo_advantages_and_loss_match_an_eager_computation(files, tmp_path, num_iterations):
    """On one rollout: the advantages are the leave-one-out baselines of the rewards less beta times each
    completion's summed KL (from full logits of the sampling policy and the reference); after an update the loss,
    entropy and clip ratios are those of whole-completion ratios from full logits. With one iteration the ratio is
    1 exactly (no old logprobs are handed to the loss)."""
    g, epsilon, beta, temperature = 4, 0.1, 0.2, 0.8
    config = online_config(files, tmp_path, "rloo", num_iterations=num_iterations, epsilon=epsilon, beta=beta,
                           temperature=temperature, num_generations=g, micro_batch_size=2)
    algorithm, batch = build(config)
    with torch.no_grad():
        for p in algorithm.reference.parameters():  # a reference that differs from the policy
            p.add_(0.05 * torch.randn_like(p))
    micro = algorithm.updates([batch])[0][0]
    assert "ref_logps" not in micro and ("old_logps" in micro) == (num_iterations > 1)
    mask = micro["labels"] != -100
    old, _ = eager_logps(algorithm.model, micro, temperature)
    ref, _ = eager_logps(algorithm.reference, micro, temperature)
    ids = [row[row != -100] for row in micro["labels"]]
    rewards = torch.tensor([float((r < LOW_IDS).float().mean()) for r in ids])
    shaped = (rewards - beta * ((old - ref) * mask).sum(-1)).view(-1, g)
    expected_adv = (shaped - (shaped.sum(1, keepdim=True) - shaped) / (g - 1)).flatten()
    torch.testing.assert_close(micro["advantages"], expected_adv, atol=1e-5, rtol=1e-4)
    rollout = micro["rollout_metrics"]
    assert rollout["reward"] == pytest.approx(float(rewards.mean()), abs=1e-6)
    assert rollout["kl"] == pytest.approx(float(masked_mean(old - ref, mask)), abs=1e-5) and rollout["kl"] > 0
    assert rollout["kl_penalty"] == pytest.approx(float(beta * ((old - ref) * mask).sum(-1).mean()), rel=1e-4)

    optimizer_step(algorithm, micro, lr=3e-2)
    loss, metrics = algorithm.loss(micro)
    logp, entropy = eager_logps(algorithm.model, micro, temperature)
    seq = (logp * mask).sum(-1)
    ratio = torch.exp(seq - (old * mask).sum(-1)) if num_iterations > 1 else torch.ones_like(seq)
    low, high = (ratio < 1 - epsilon) & (expected_adv < 0), (ratio > 1 + epsilon) & (expected_adv > 0)
    expected = {
        "loss": -torch.minimum(ratio * expected_adv, ratio.clamp(1 - epsilon, 1 + epsilon) * expected_adv).mean(),
        "entropy": masked_mean(entropy, mask), "clip_ratio/low_mean": low.float().mean(),
        "clip_ratio/high_mean": high.float().mean(), "clip_ratio/region_mean": (low | high).float().mean(),
    }
    assert (expected["clip_ratio/region_mean"] > 0) == (num_iterations > 1)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(float(value), abs=1e-5, rel=1e-4), key


def test_rloo_raises_the_toy_reward(files, tmp_path):
    """A few dozen steps of RLOO with the KL penalty in the reward and normalised advantages: the fraction of
    low-id tokens climbs clearly above its start, and the policy moves away from the reference."""
    config = online_config(files, tmp_path / "run", "rloo", max_steps=30, learning_rate=2e-2, beta=0.01,
                           num_generations=8, micro_batch_size=2, test_datasets=[], normalize_advantages=True)
    result = train(config)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward"] for r in records if r["split"] == "train"]
    assert result.step == 30 and len(rewards) == 30
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.3, rewards
    kl = [r["kl"] for r in records if r["split"] == "train"]  # k1 token means: one batch's may fall below 0
    assert sum(kl[-5:]) / 5 > sum(kl[:5]) / 5 + 0.1, kl


# ---- Online DPO --------------------------------------------------------------------------------


def test_online_dpo_ranks_each_pair_by_score_and_takes_the_dpo_loss(files, tmp_path):
    """Two completions per prompt: each micro-batch holds the better-scored one of every pair first and the
    other second (same prompt), the rollout metrics are the scores', and the loss is DPO's sigmoid loss of the
    pairs against the reference, from full logits."""
    beta, temperature = 0.3, 1.0
    config = online_config(files, tmp_path, "online_dpo", micro_batch_size=4, beta=beta, reward_model=None,
                           reward_funcs=[f"{files['rewards']}:low_ids"])
    algorithm, batch = build(config)
    with torch.no_grad():
        for p in algorithm.reference.parameters():  # a reference that differs from the policy
            p.add_(0.05 * torch.randn_like(p))
    ((micro,),) = [algorithm.updates([batch])]
    assert len(micro) == 1 and algorithm.batch_rows(micro[0]) == 4
    micro = micro[0]
    rows, mask = micro["input_ids"].shape[0] // 2, micro["labels"] != -100
    prompt = ~mask.cumsum(1).bool() & micro["attention_mask"].bool()  # tokens before the first label
    for c, r in zip(range(rows), range(rows, 2 * rows)):
        assert micro["input_ids"][c][prompt[c]].tolist()[:-1] == micro["input_ids"][r][prompt[r]].tolist()[:-1]
    scores = torch.tensor([float((row[m] < LOW_IDS).float().mean()) for row, m in zip(micro["labels"], mask)])
    assert bool((scores[:rows] >= scores[rows:]).all())
    metrics = micro["rollout_metrics"]
    assert metrics["objective/scores"] == pytest.approx(float(scores.mean()), abs=1e-6)
    assert metrics["objective/scores_margin"] == pytest.approx(float((scores[:rows] - scores[rows:]).mean()),
                                                               abs=1e-6)
    loss, got = algorithm.loss(micro)
    policy = (eager_logps(algorithm.policy, micro, temperature)[0] * mask).sum(1)
    reference = (eager_logps(algorithm.reference, micro, temperature)[0] * mask).sum(1)
    margin = (policy - reference)[:rows] - (policy - reference)[rows:]
    assert loss.item() == pytest.approx(float(-torch.nn.functional.logsigmoid(beta * margin).mean()), rel=1e-4)
    assert got["rewards/margins"] == pytest.approx(float(beta * margin.mean()), abs=1e-5, rel=1e-4)
    assert "nll_loss" in got and got["loss"] == pytest.approx(loss.item())  # logged, not in the loss


def test_online_dpo_raises_the_toy_reward(files, tmp_path):
    config = online_config(files, tmp_path / "run", "online_dpo", max_steps=30, learning_rate=2e-2, beta=0.1,
                           micro_batch_size=4, test_datasets=[], num_sample_generations=2, reward_model=None,
                           reward_funcs=[f"{files['rewards']}:low_ids"])
    result = train(config)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    scores = [r["objective/scores"] for r in records if r["split"] == "train"]
    assert result.step == 30 and len(scores) == 30
    assert sum(scores[-5:]) / 5 > sum(scores[:5]) / 5 + 0.2, scores
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and "(chosen)" in samples[0]["text"] and "(rejected)" in samples[0]["text"]


# ---- PPO ---------------------------------------------------------------------------------------

def test_ppo_step_lowers_its_loss_on_the_rollout(files, tmp_path):
    algorithm, batch = build(online_config(files, tmp_path, "ppo", micro_batch_size=4))
    updates = algorithm.updates([batch])
    assert len(updates) == 4 and all(len(u) == 1 for u in updates)  # num_ppo_epochs x num_mini_batches
    micro_batch = updates[0][0]
    before = optimizer_step(algorithm, micro_batch, lr=1e-3)
    after, _ = algorithm.loss(micro_batch)
    assert after.item() < before - 1e-3


@pytest.mark.parametrize("penalty", [None, 1.5])
def test_ppo_rollout_matches_an_eager_computation(files, tmp_path, penalty):
    """Old / reference logprobs, values, reward-model scores (unpadded; less ``missing_eos_penalty`` for a
    completion without EOS) and the KL penalty, on one rollout."""
    temperature, kl_coef = 0.7, 0.3
    config = online_config(files, tmp_path, "ppo", micro_batch_size=4, temperature=temperature, kl_coef=kl_coef,
                           num_ppo_epochs=1, missing_eos_penalty=penalty)
    algorithm, batch = build(config)
    with torch.no_grad():
        for p in algorithm.reference.parameters():  # a reference that differs from the policy
            p.add_(0.05 * torch.randn_like(p))
    micro = algorithm.updates([batch])[0][0]
    mask = micro["labels"] != -100
    old, _ = eager_logps(algorithm.policy, micro, temperature)
    ref, _ = eager_logps(algorithm.reference, micro, temperature)
    torch.testing.assert_close(micro["old_logps"], old, atol=1e-5, rtol=1e-4)
    scores = []
    for ids, attention in zip(micro["input_ids"], micro["attention_mask"]):
        real = ids[attention.bool()][None]
        scores.append(algorithm.reward_model(real, torch.ones_like(real)))
    scores = torch.cat(scores)
    if penalty is not None:
        ended = torch.isin(micro["labels"], torch.tensor(algorithm.eos_token_ids())).any(1)
        assert not ended.all()
        scores = scores - penalty * (~ended).float()
    metrics = micro["rollout_metrics"]
    assert metrics["objective/scores"] == pytest.approx(float(scores.mean()), abs=1e-5)
    kl = ((old - ref) * mask).sum(1).mean()
    assert metrics["objective/kl"] == pytest.approx(float(kl), abs=1e-5, rel=1e-4)
    assert metrics["objective/rlhf_reward"] == pytest.approx(float(scores.mean() - kl_coef * kl), abs=1e-5)
    values = algorithm.model.value.token_values(micro["input_ids"], micro["attention_mask"], micro["position_ids"])
    torch.testing.assert_close(micro["old_values"], values.detach(), atol=1e-5, rtol=1e-4)


def test_ppo_trains_both_models_and_saves_them(files, tmp_path):
    config = online_config(files, tmp_path / "run", "ppo", max_steps=4, num_ppo_epochs=2, num_mini_batches=2,
                           micro_batch_size=2, save_steps=4, num_sample_generations=2)
    start = {n: p.detach().clone() for n, p in build_algorithm(config, pick_device()).model.named_parameters()}
    result = train(config)
    assert result.step == 4 and "objective/scores" in result.eval_after
    final, checkpoint = tmp_path / "run" / "final", tmp_path / "run" / "checkpoint-4"
    assert (final / "value_model" / "value_head.safetensors").is_file()
    restored = build_algorithm(config, pick_device())
    load_weights(restored.model, checkpoint)
    changed = {n for n, p in restored.model.named_parameters() if not torch.equal(p, start[n])}
    assert any(n.startswith("policy.") for n in changed) and any(n.startswith("value.") for n in changed)
    assert "value.value_head.weight" in changed
    samples = (tmp_path / "run" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 2 and "score=" in json.loads(samples[0])["text"]


def test_value_model_starts_from_the_reward_model(files, tmp_path):
    algorithm, _ = build(online_config(files, tmp_path, "ppo"))
    assert torch.equal(algorithm.model.value.value_head.weight, algorithm.reward_model.value_head.weight)
    assert all(not p.requires_grad for p in algorithm.reward_model.parameters())
    assert all(p.requires_grad for p in algorithm.model.value.parameters())


def test_a_missing_reward_model_names_the_key(files, tmp_path):
    with pytest.raises(ValueError, match="reward_model: cannot load '.*no-such-rm'.*written by rl: rm"):
        build_algorithm(online_config(files, tmp_path, "ppo", reward_model=str(tmp_path / "no-such-rm")), pick_device())


@pytest.mark.parametrize("rl", ["grpo", "ppo"])
def test_lora_and_gradient_checkpointing(files, tmp_path, rl):
    """LoRA policy (reference = adapters disabled, so no copy) with gradient checkpointing: the run trains."""
    config = online_config(files, tmp_path / "run", rl, adapter="lora", lora_r=4, gradient_checkpointing=True,
                           max_steps=2, test_datasets=[], **({"num_ppo_epochs": 1} if rl == "ppo" else {}))
    result = train(config)
    assert result.step == 2 and all(torch.isfinite(torch.tensor(result.train_losses)))
    assert (tmp_path / "run" / "final" / "adapter").is_dir()


# ---- resume ------------------------------------------------------------------------------------

def checkpoint_tensors(folder):
    """Every tensor of every safetensors file under ``folder``: weights, value model, optimizer, RNG, round."""
    return {f"{path.relative_to(folder)}:{name}": tensor for path in sorted(folder.rglob("*.safetensors"))
            for name, tensor in load_file(str(path)).items()}


def log_records(out, name):
    """The records of ``out/name`` (a JSONL log), wall-clock times left out."""
    return [{k: v for k, v in json.loads(line).items() if k not in ("step_time", "tokens_per_second")}
            for line in (out / name).read_text().splitlines()]


@pytest.mark.parametrize("rl, overrides, inside, boundary", [
    # rounds of 3 updates on one rollout; LoRA dropout draws from the RNG during the updates
    ("grpo", {"num_iterations": 3, "max_steps": 5, "adapter": "lora", "lora_r": 4, "lora_dropout": 0.1,
              "disable_dropout": False}, 1, 3),
    # rounds of 2 epochs x 2 mini-batches, each update a fresh permutation's slice
    ("ppo", {"num_ppo_epochs": 2, "num_mini_batches": 2, "micro_batch_size": 2, "max_steps": 5}, 2, 4),
])
def test_resume_inside_a_round_and_at_its_end_is_exact(files, tmp_path, rl, overrides, inside, boundary):
    """Stopped after ``inside`` or ``boundary`` steps (logs already written further) and resumed, a run ends
    with the same weights, optimizer, RNG and trainer state to the bit, and the same metrics and samples."""
    def config(out, **more):
        return online_config(files, out, rl, save_steps=1, save_total_limit=None, num_sample_generations=5,
                             test_datasets=[], **overrides, **more)

    full_dir = tmp_path / "full"
    full = train(config(full_dir))
    last = full_dir / f"checkpoint-{full.step}"
    assert (full_dir / f"checkpoint-{inside}" / "round.safetensors").is_file()
    assert not (full_dir / f"checkpoint-{boundary}" / "round.safetensors").exists()
    if rl == "grpo":  # the two updates left share one micro-batch, stored once
        pending = json.loads((full_dir / f"checkpoint-{inside}" / "rank_state.json").read_text())["round"]
        assert pending["updates"] == [[0], [0]] and len(pending["micro_batches"]) == 1
    train_steps = [r["step"] for r in log_records(full_dir, "metrics.jsonl") if r["split"] == "train"]
    assert train_steps == list(range(1, full.step + 1))

    for k in (inside, boundary):
        out = tmp_path / f"resumed-{k}"
        shutil.copytree(full_dir / f"checkpoint-{k}", out / f"checkpoint-{k}")
        for name in ("metrics.jsonl", "samples.jsonl"):
            shutil.copy(full_dir / name, out / name)
        resumed = train(config(out, resume_from_checkpoint="latest"))
        assert resumed.step == full.step and resumed.train_losses == full.train_losses[k:]
        expected, got = checkpoint_tensors(last), checkpoint_tensors(out / last.name)
        assert got.keys() == expected.keys()
        assert [name for name in expected if not torch.equal(got[name], expected[name])] == []
        for name in ("trainer_state.json", "rank_state.json"):
            assert (out / last.name / name).read_text() == (last / name).read_text(), name
        for name in ("metrics.jsonl", "samples.jsonl"):
            assert log_records(out, name) == log_records(full_dir, name), name


# ---- config ------------------------------------------------------------------------------------

BASE = {"base_model": "m", "datasets": [{"path": "d.jsonl"}]}


def test_online_defaults():
    grpo = config_from_dict({**BASE, "rl": "grpo", "reward_funcs": ["accuracy"]})
    assert (grpo.effective_beta, grpo.effective_loss_type, grpo.effective_num_generations, grpo.temperature) == (
        0.04, "grpo", 8, 0.9)
    assert (grpo.max_completion_length, grpo.epsilon, grpo.scale_rewards, grpo.num_iterations) == (
        512, 0.2, "group", 1)
    ppo = config_from_dict({**BASE, "rl": "ppo", "reward_model": "rm"})
    assert (ppo.kl_coef, ppo.cliprange, ppo.vf_coef, ppo.cliprange_value, ppo.gamma, ppo.lam) == (
        0.05, 0.2, 0.1, 0.2, 1.0, 0.95)
    assert (ppo.num_ppo_epochs, ppo.num_mini_batches, ppo.whiten_rewards, ppo.num_sample_generations) == (
        4, 1, False, 10)
    rloo = config_from_dict({**BASE, "rl": "rloo", "reward_funcs": ["accuracy"]})  # TRL's RLOOConfig
    assert (rloo.effective_beta, rloo.effective_num_generations, rloo.epsilon, rloo.epsilon_high) == (
        0.05, 2, 0.2, None)
    assert (rloo.normalize_advantages, rloo.reward_clip_range, rloo.effective_loss_type) == (False, None, None)
    assert ppo.local_rollout_forward_batch_size == 64 and ppo.kl_estimator == "k1"
    assert config_from_dict({**BASE, "rl": "grpo", "reward_funcs": ["accuracy"], "beta": 0}).effective_beta == 0
    assert config_from_dict({**BASE, "rl": "dpo"}).effective_loss_type == "sigmoid"


@pytest.mark.parametrize("bad, message", [
    ({"rl": "dpo", "beta": 0}, "beta: expected a value > 0"),
    ({"rl": "grpo", "beta": -0.1}, "beta: expected a value >= 0"),
    ({"rl": "grpo", "loss_type": "sigmoid"}, "loss_type: expected one of .* for rl=grpo"),
    ({"rl": "dpo", "loss_type": "dapo"}, "loss_type: expected one of .* for rl=dpo"),
    ({"rl": "sft", "loss_type": "grpo"}, "loss_type: rl=sft has no loss types"),
    ({"rl": "ppo", "reward_model": None}, "reward_model: PPO needs a reward model"),
    ({"rl": "grpo", "reward_funcs": []}, "reward_funcs: rl=grpo needs reward functions or a reward_model"),
    ({"rl": "online_dpo", "reward_funcs": []}, "reward_funcs: rl=online_dpo needs reward functions or a reward_model"),
    ({"rl": "online_dpo", "reward_funcs": ["accuracy"], "loss_type": "hinge"},
     "loss_type: expected one of \\[.sigmoid., .ipo.\\] for rl=online_dpo"),
    ({"rl": "online_dpo", "reward_funcs": ["accuracy"], "rpo_alpha": 0.5}, "rpo_alpha: rl=online_dpo does not read it"),
    ({"rl": "online_dpo", "reward_funcs": ["accuracy"], "num_generations": 4},
     "num_generations: rl=online_dpo does not read it"),
    ({"rl": "grpo", "reward_weights": [1.0, 2.0]}, "reward_weights: expected 1 numbers"),
    ({"rl": "grpo", "delta": 1.1}, "delta: expected a value > 1 \\+ epsilon_high"),
    ({"rl": "grpo", "delta": 2.0, "loss_type": "cispo"}, "delta: loss_type cispo has no unclipped importance-weight"),
    ({"rl": "grpo", "delta": 2.0, "loss_type": "sapo"}, "delta: loss_type sapo has no unclipped importance-weight"),
    ({"rl": "grpo", "epsilon_high": 0.28, "loss_type": "sapo"}, "epsilon_high: loss_type sapo has no clip range"),
    ({"rl": "grpo", "epsilon": 0.1, "loss_type": "sapo"}, "epsilon: loss_type sapo has no clip range"),
    ({"rl": "grpo", "sapo_temperature_neg": 2.0}, "sapo_temperature_neg: only read with loss_type: sapo"),
    ({"rl": "grpo", "off_policy_mask_threshold": 0.1}, "off_policy_mask_threshold: with num_iterations 1"),
    ({"rl": "grpo", "beta": 0.0, "use_bias_correction_kl": True}, "use_bias_correction_kl: corrects the KL term"),
    ({"rl": "ppo", "reward_model": "rm", "use_bias_correction_kl": True}, "use_bias_correction_kl: rl=ppo does not"),
    ({"rl": "grpo", "loss_type": "sapo", "sapo_temperature_pos": 0}, "sapo_temperature_pos: expected a value > 0"),
    ({"rl": "grpo", "reward_format_pattern": "(unclosed"}, "reward_format_pattern: not a valid regular expression"),
    ({"rl": "grpo", "num_generations": 1}, "num_generations: expected a value >= 2"),
    ({"rl": "grpo", "scale_rewards": "group_norm"}, "scale_rewards: expected one of"),
    ({"rl": "grpo", "loss_type": "vespo", "importance_sampling_level": "sequence"},
     "importance_sampling_level: loss_type vespo needs token"),
    ({"rl": "grpo", "loss_type": "luspo"}, "importance_sampling_level: loss_type luspo needs sequence"),
    ({"rl": "grpo", "loss_type": "vespo", "epsilon_high": 0.28}, "epsilon_high: loss_type vespo has no clip range"),
    ({"rl": "grpo", "loss_type": "vespo", "delta": 2.0}, "delta: loss_type vespo has no unclipped"),
    ({"rl": "grpo", "vespo_k_pos": 1.0}, "vespo_k_pos: only read with loss_type: vespo"),
    ({"rl": "grpo", "multi_objective_aggregation": "normalize_then_sum", "scale_rewards": "batch"},
     "scale_rewards: only read with multi_objective_aggregation: sum_then_normalize"),
    ({"rl": "grpo", "reward_funcs": ["soft_overlong"]}, "soft_punish_cache: set it with the built-in soft_overlong"),
    ({"rl": "grpo", "soft_punish_cache": 64}, "soft_punish_cache: set it with the built-in soft_overlong"),
    ({"rl": "grpo", "reward_funcs": ["soft_overlong"], "soft_punish_cache": 600},
     "soft_punish_cache: expected a value <= max_completion_length \\(512\\)"),
    ({"rl": "ppo", "reward_model": "rm", "soft_punish_cache": 64}, "soft_punish_cache: rl=ppo does not read it"),
    ({"rl": "rloo", "reward_funcs": []}, "reward_funcs: rl=rloo needs reward functions or a reward_model"),
    ({"rl": "rloo", "beta": -0.1}, "beta: expected a value >= 0"),
    ({"rl": "rloo", "scale_rewards": "batch"}, "scale_rewards: rl=rloo does not read it"),
    ({"rl": "rloo", "loss_type": "grpo"}, "loss_type: rl=rloo has no loss types"),
    ({"rl": "rloo", "delta": 2.0}, "delta: rl=rloo does not read it"),
    ({"rl": "rloo", "reward_clip_range": [1.0, -1.0]}, "reward_clip_range: expected two numbers \\[low, high\\]"),
    ({"rl": "rloo", "reward_clip_range": [0.0, "1"]}, "reward_clip_range: expected two numbers"),
    ({"rl": "rloo", "beta": 0.0, "sync_ref_model": True}, "sync_ref_model: rl=rloo with beta: 0 loads no reference"),
    ({"rl": "grpo", "normalize_advantages": True}, "normalize_advantages: rl=grpo does not read it"),
    ({"rl": "sft", "num_generations": 4}, "num_generations: rl=sft does not read it"),
    ({"rl": "ppo", "kl_estimator": "k2"}, "kl_estimator: expected one of"),
    ({"rl": "ppo", "cliprange": 0}, "cliprange: expected a value > 0"),
])
def test_bad_online_config_names_the_key(bad, message):
    rewards = {"grpo": {"reward_funcs": ["accuracy"]}, "rloo": {"reward_funcs": ["accuracy"]},
               "ppo": {"reward_model": "rm"}}.get(bad["rl"], {})
    with pytest.raises(ConfigError, match=message):
        config_from_dict({**BASE, **rewards, **bad})


def test_attn_implementation_reaches_the_reward_and_value_models(files, tmp_path):
    algorithm = build_algorithm(online_config(files, tmp_path, "ppo", attn_implementation="eager"), pick_device())
    for model in (algorithm.policy, algorithm.model.value.backbone, algorithm.reward_model.backbone):
        assert model.config._attn_implementation == "eager"


def test_evaluation_rollouts_are_not_logged_as_training_samples(files, tmp_path):
    """``samples.jsonl`` shows the latest *training* rollout; an evaluation rollout in between leaves it."""
    algorithm, batch = build(online_config(files, tmp_path, "grpo"))
    algorithm.model.train()
    algorithm.updates([batch])
    logged = list(algorithm.latest)
    algorithm.model.eval()
    algorithm.evaluation_batches(batch)
    algorithm.model.train()
    assert logged and algorithm.latest == logged


def test_ppo_evaluation_scores_each_held_out_row_once(files, tmp_path):
    """PPO's updates repeat the rollout num_ppo_epochs times in num_mini_batches slices; evaluation takes one pass."""
    algorithm, batch = build(online_config(files, tmp_path, "ppo", micro_batch_size=4, num_mini_batches=2,
                                           num_ppo_epochs=3))
    micro_batches = algorithm.evaluation_batches(batch)
    assert sum(m["input_ids"].shape[0] for m in micro_batches) == batch["prompt_input_ids"].shape[0]


def test_torch_compile_trains_as_eager(files, tmp_path):
    """``torch_compile`` compiles the policy's and the reference's decoder layers (with gradient checkpointing);
    sampling runs them eagerly. Two GRPO steps give the same samples, losses and weights as the eager run."""
    runs = {}
    for compiled in (False, True):
        config = online_config(files, tmp_path / str(compiled), "grpo", max_steps=2, beta=0.1,
                               gradient_checkpointing=True, torch_compile=compiled)
        runs[compiled] = train(config)
    eager, compiled = runs[False], runs[True]
    torch.testing.assert_close(torch.tensor(compiled.train_losses), torch.tensor(eager.train_losses),
                               rtol=1e-4, atol=1e-6)
    want = load_file(str(tmp_path / "False" / "final" / "model.safetensors"))
    got = load_file(str(tmp_path / "True" / "final" / "model.safetensors"))
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-5)
