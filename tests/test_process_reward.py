"""Process reward modelling (``rl: prm``): stepwise rows, their batches, the loss, and a model that learns to
score steps."""
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

from engine_fixtures import save_tiny_model, train_config
from tokenizer_fixture import tiny_tokenizer
from fusedrl.engine.algorithms import build_algorithm
from fusedrl.engine.batches import fixed_batches
from fusedrl.engine.config import ConfigError, config_from_dict
from fusedrl.engine.data import DataConfig, make_collator, pad_token_id, prepare_dataset
from fusedrl.engine.data.templates import render
from fusedrl.engine.distributed import pick_device
from fusedrl.engine.models import RewardModel
from fusedrl.engine.step_scores import step_scores
from fusedrl.engine.trainer import train
from fusedrl.engine.training_data import load_training_data
from fusedrl.kernels.losses import process_reward_loss

ROW = {"prompt": "What is two plus two?", "completions": ["Two plus two", "is four.", "The sky is green."],
       "labels": [True, True, False]}


def write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def stepwise(tmp_path, rows, tokenizer=None, **config):
    """The tokenised dataset of ``rows`` and the collated batch of all of them."""
    tokenizer = tokenizer or tiny_tokenizer()
    data_config = DataConfig(cache_dir=str(tmp_path / "cache"), **config)
    ds = prepare_dataset({"path": str(write(tmp_path / "steps.jsonl", rows))}, tokenizer, "prm", data_config)
    return ds, make_collator("prm", pad_token_id(tokenizer), data_config)(list(ds))


@pytest.mark.parametrize("bos", [False, True], ids=["no-bos", "bos"])
@pytest.mark.parametrize("separator", ["\n", " ки"], ids=["newline", "math-shepherd-tag"])
def test_each_label_sits_on_the_last_token_of_its_step_and_separator(tmp_path, bos, separator):
    """As TRL's PRMTrainer: [BOS] + prompt, then each step's tokens and the separator's (each tokenised alone);
    a step's label (1 correct, 0 wrong) at its separator's last token, -100 elsewhere, unshifted."""
    tok = tiny_tokenizer(add_bos=bos)
    ids_of = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    want_ids = [tok.bos_token_id] * bos + ids_of(ROW["prompt"])
    want_labels = [-100] * len(want_ids)
    for step, correct in zip(ROW["completions"], ROW["labels"]):
        piece = ids_of(step) + ids_of(separator)
        want_ids += piece
        want_labels += [-100] * (len(piece) - 1) + [int(correct)]
    ds, batch = stepwise(tmp_path, [ROW], tok, step_separator=separator)
    assert ds[0]["input_ids"] == want_ids and ds[0]["step_labels"] == want_labels and ds[0]["last_step_kept"]
    assert batch["input_ids"].tolist() == [want_ids] and batch["labels"].tolist() == [want_labels]
    assert batch["last_step"].tolist() == [len(want_ids) - 1]


def test_a_message_prompt_gets_the_templates_generation_prompt(tmp_path):
    tok = tiny_tokenizer()
    messages = [{"role": "user", "content": "What is two plus two?"}]
    ds, _ = stepwise(tmp_path, [{**ROW, "prompt": messages}], tok)
    ids, labels = ds[0]["input_ids"], ds[0]["step_labels"]
    prompt = render(tok, tok.chat_template, messages, generation_prompt=True)
    assert tok.decode(ids) == prompt + "Two plus two\nis four.\nThe sky is green.\n"
    assert [tok.decode(ids[: i + 1])[len(prompt):] for i, label in enumerate(labels) if label != -100] == [
        "Two plus two\n", "Two plus two\nis four.\n", "Two plus two\nis four.\nThe sky is green.\n"]


def test_truncation_keeps_the_labels_of_the_steps_it_keeps(tmp_path):
    """A row whose tail ``max_length`` cuts keeps its first steps' labels, and its final step is marked lost
    (``last_step`` -1); padding carries -100."""
    full, _ = stepwise(tmp_path, [ROW])
    ends = [i for i, label in enumerate(full[0]["step_labels"]) if label != -100]
    cut, batch = stepwise(tmp_path / "cut", [ROW, {**ROW, "completions": ROW["completions"][:2], "labels": [1, 0]}],
                          max_length=ends[1] + 2)
    assert cut[0]["step_labels"] == full[0]["step_labels"][: ends[1] + 2] and not cut[0]["last_step_kept"]
    assert batch["last_step"].tolist() == [-1, ends[1]]
    assert batch["labels"][1].tolist() == full[0]["step_labels"][: ends[1]] + [0] + [-100]
    assert batch["attention_mask"][1].tolist() == [1] * (ends[1] + 1) + [0]


def test_loss_is_the_binary_cross_entropy_of_the_steps_in_mask():
    """Hand values; the same as TRL's two-class token cross-entropy with logits (0, s)."""
    scores = torch.tensor([[2.0, -1.0, 0.5], [0.3, -0.2, 4.0]], requires_grad=True)
    labels = torch.tensor([[1, 0, -100], [0, -100, 1]])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    loss, accuracy = process_reward_loss(scores, labels, mask)
    s, y = torch.tensor([2.0, -1.0, 0.3, 4.0]), torch.tensor([1.0, 0.0, 0.0, 1.0])
    assert loss.item() == pytest.approx(float((F.softplus(-s) * y + F.softplus(s) * (1 - y)).mean()), rel=1e-6)
    two_class = F.cross_entropy(torch.stack([torch.zeros(4), s], -1), y.long())
    assert loss.item() == pytest.approx(two_class.item(), rel=1e-6)
    assert accuracy.item() == pytest.approx(0.75)  # 0.3 > 0 calls a wrong step correct
    loss.backward()
    assert scores.grad[0, 2] == 0 and scores.grad[1, 1] == 0
    assert scores.grad[0, 0].item() == pytest.approx((torch.sigmoid(torch.tensor(2.0)).item() - 1) / 4)


def test_loss_of_no_step_is_zero_and_bad_inputs_are_named():
    scores = torch.randn(2, 3, requires_grad=True)
    none = torch.zeros(2, 3, dtype=torch.bool)
    loss, accuracy = process_reward_loss(scores, torch.full((2, 3), -100), none)
    loss.backward()
    assert loss.item() == 0 and accuracy.item() == 0 and not scores.grad.any()
    with pytest.raises(ValueError, match="^mask: expected a bool tensor"):
        process_reward_loss(scores, torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="^labels: expected 0 or 1 at every step in mask"):
        process_reward_loss(scores, torch.full((2, 3), 2), ~none)
    with pytest.raises(ValueError, match=r"^labels: expected shape \[2, 3\] like scores"):
        process_reward_loss(scores, torch.zeros(2, 4), ~none)


def colour_rows(count: int, seed: int) -> list[dict]:
    """Rows of 1 to 3 steps whose correctness is in their own words: "... blue." right, "... green." wrong
    (``colour_rows(48, 0)`` wrote the ``trl_stepwise.jsonl`` fixture)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        labels = [rng.random() < 0.5 for _ in range(rng.randint(1, 3))]
        steps = [f"The {rng.choice(['sky', 'grass', 'sea'])} is {'blue' if ok else 'green'}." for ok in labels]
        rows.append({"prompt": "Write a short poem about the sea.", "completions": steps, "labels": labels})
    return rows


def test_training_learns_to_score_each_step_and_saves_a_reward_model(tmp_path):
    """On steps whose correctness is in their words, held-out step accuracy goes from chance (every score 0) to
    > 0.9; the saved folder loads as a ``RewardModel`` whose token values at the steps give the logged accuracy,
    and ``step_scores`` of a held-out row are the sigmoids of those values."""
    model = save_tiny_model(tmp_path / "tiny")
    held_out = write(tmp_path / "held.jsonl", colour_rows(24, 1))
    config = config_from_dict(train_config(model, tmp_path / "run", "prm", test_datasets=[{"path": str(held_out)}],
                                           max_length=96,
                                           micro_batch_size=8, max_steps=40, learning_rate=3e-3))
    result = train(config)
    assert result.eval_before["loss"] == pytest.approx(math.log(2))  # the head starts at 0: no opinion
    assert result.eval_after["accuracy"] > 0.9, result.eval_after
    assert result.eval_after["loss"] < 0.5 * result.eval_before["loss"]
    assert result.eval_after["num_steps"] == sum(len(r["labels"]) for r in colour_rows(24, 1))
    saved = RewardModel.from_pretrained(str(tmp_path / "run" / "final")).eval()
    _, batch = stepwise(tmp_path, colour_rows(24, 1), max_length=96)
    with torch.no_grad():
        scores = saved.token_values(batch["input_ids"], batch["attention_mask"])
    steps = batch["labels"] != -100
    agree = ((scores[steps] > 0).long() == batch["labels"][steps]).float().mean()
    assert agree.item() == pytest.approx(result.eval_after["accuracy"], abs=1e-6)
    row = colour_rows(24, 1)[0]
    probabilities = step_scores(saved, tiny_tokenizer(), row["prompt"], row["completions"])
    torch.testing.assert_close(probabilities, torch.sigmoid(scores[0][steps[0]]))


def test_last_step_only_trains_on_final_steps_and_evaluates_every_step(tmp_path):
    """``train_on_last_step_only``: in training the loss and its weight cover each row's final step (none for a
    row that lost it to truncation); evaluation scores every step, as TRL's PRMTrainer."""
    model = save_tiny_model(tmp_path / "tiny")
    rows = [ROW, {**ROW, "completions": ROW["completions"][:2], "labels": [True, False]}]
    config = config_from_dict(train_config(model, tmp_path / "run", "prm", train_on_last_step_only=True,
                                           datasets=[{"path": str(write(tmp_path / "steps.jsonl", rows))}],
                                           test_datasets=[], max_length=96))
    algorithm = build_algorithm(config, pick_device())
    data = load_training_data(config, algorithm.tokenizer, algorithm.data_kind)
    batch = fixed_batches(data.train, 2, data.collate)[0]
    labelled = batch["labels"] != -100
    last = torch.zeros_like(labelled)
    last[torch.arange(2), batch["last_step"]] = True
    assert algorithm.trained_steps(batch).equal(last) and algorithm.batch_weight(batch) == 2
    with torch.no_grad():
        scores = algorithm.model.token_values(batch["input_ids"], batch["attention_mask"])
    loss, metrics = algorithm.loss(batch)
    assert loss.item() == pytest.approx(process_reward_loss(scores, batch["labels"], last)[0].item(), rel=1e-6)
    assert metrics["num_steps"] == 2
    algorithm.model.eval()
    assert algorithm.trained_steps(batch).equal(labelled) and algorithm.batch_weight(batch) == 5
    assert algorithm.loss(batch)[1]["num_steps"] == 5


def test_step_keys_are_for_prm_only(tmp_path):
    for key, value in (("step_separator", " ки"), ("train_on_last_step_only", True)):
        with pytest.raises(ConfigError, match=f"^config: {key}: rl=dpo does not read it"):
            config_from_dict(train_config(tmp_path, tmp_path / "run", "dpo", **{key: value}))


def test_a_backslash_and_n_as_separator_is_refused(tmp_path):
    """``--step_separator \\n`` on a command line reaches YAML unquoted: two characters, not a newline."""
    with pytest.raises(ConfigError, match=r"^config: step_separator: '\\\\n' holds a backslash and a letter, not a "
                                          r"newline or a tab; write it in double quotes"):
        config_from_dict(train_config(tmp_path, tmp_path / "run", "prm", step_separator="\\n"))
    assert config_from_dict(train_config(tmp_path, tmp_path / "run", "prm", step_separator="\n")).step_separator == "\n"
