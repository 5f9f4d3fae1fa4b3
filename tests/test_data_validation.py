"""Bad rows: a ValueError naming file, row and field, or a counted skip; all-bad data fails."""
import json
import logging
import re

import datasets
import pytest

from tokenizer_fixture import FIXTURES, prepare, tiny_tokenizer

from fusedrl.engine.data import DataConfig, DatasetSpec, data_kind, prepare_dataset, tokenize_dataset

GOOD = {"prompt": "What is two plus two?", "chosen": " four", "rejected": " five"}
LONG = "The sky is blue. The grass is green. Paris is the capital of France. " * 3
STEPS = {"prompt": "What is two plus two?", "completions": ["Two plus two", "is four."], "labels": [True, False]}


def _write(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _prepare(path, algorithm, tmp_path, spec=None, **config):
    return prepare_dataset({"path": str(path), **(spec or {})}, tiny_tokenizer(), algorithm,
                           DataConfig(cache_dir=str(tmp_path / "cache"), **config))


CASES = [
    ("dpo", [GOOD, {"prompt": "Sky?", "chosen": " blue"}], {}, {},
     "row 1: field 'rejected': missing field (expected text or a list of messages)"),
    ("dpo", [GOOD, {**GOOD, "chosen": ""}], {}, {}, "row 1: field 'chosen': empty completion (expected non-empty text"),
    ("dpo", [GOOD, {**GOOD, "chosen": 7}], {}, {}, "row 1: field 'chosen': wrong type (expected text or a list of messages, got 7)"),
    ("dpo", [GOOD, {**GOOD, "prompt": LONG}], {}, {"max_length": 24},
     "row 1: field 'prompt': prompt too long (expected a prompt shorter than max_length=24 tokens"),
    ("dpo", [GOOD, {**GOOD, "prompt": [{"role": "user"}]}], {}, {},
     "row 1: field 'prompt': wrong type (expected a message {'role': str, 'content': str}"),
    ("kto", [{"prompt": "a", "completion": " b", "label": True}, {"prompt": "a", "completion": " b", "label": "yes"}],
     {}, {}, "row 1: field 'label': wrong type (expected true or false, got 'yes')"),
    ("sft", [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
             {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}],
     {}, {}, "row 1: field 'messages': empty completion (expected non-empty assistant messages"),
    ("sft", [{"messages": [{"role": "assistant", "content": "hi"}]}], {}, {},
     "row 0: field 'messages': missing field (expected a user or system message before the first assistant reply"),
    ("sft", [{"messages": [{"role": "user", "content": "hi"}]}], {}, {},
     "row 0: field 'completion': missing field (expected a completion to train on"),
    ("sft", [GOOD], {}, {}, "row 0: field 'completion': missing field (expected a completion to train on"),
    ("dpo", [{"question": "q", "chosen": "a", "rejected": "b"}, {"question": None, "chosen": "a", "rejected": "b"}],
     {"type": "chatml.intel"}, {}, "row 1: field 'question': missing field (expected a string)"),
    ("grpo", [{"prompt": "hi", "solution": "1"}, {"prompt": LONG, "solution": "2"}], {}, {"max_length": 24},
     "row 1: field 'prompt': prompt too long"),
    ("grpo", [{"text": "only text"}], {}, {}, "row 0: field 'prompt': missing field (expected a non-empty prompt"),
    ("dpo", [{"prompt": "a", "chosen": " b", "rejected": " c", "margin": "big"}], {}, {},
     "row 0: field 'margin': wrong type (expected a number, got 'big')"),
    ("sft", [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [5, 6, 7], "labels": [-100, -100, -100]}],
     {}, {}, "row 1: field 'labels': empty completion (expected at least one trained token"),
    ("prm", [STEPS, {**STEPS, "labels": [True]}], {}, {},
     "row 1: field 'labels': wrong type (expected 2 labels, one per step, got [True])"),
    ("prm", [STEPS, {**STEPS, "labels": [True, "yes"]}], {}, {},
     "row 1: field 'labels': wrong type (expected true or false, got 'yes')"),
    ("prm", [STEPS, {**STEPS, "completions": "Two plus two is four."}], {}, {},
     "row 1: field 'completions': wrong type (expected a non-empty list of step texts, got 'Two plus two is four.')"),
    ("prm", [STEPS, {**STEPS, "completions": []}], {}, {},
     "row 1: field 'completions': empty completion (expected a non-empty list of step texts, got [])"),
    ("prm", [STEPS, {**STEPS, "completions": ["Two plus two", " "]}], {}, {},
     "row 1: field 'completions': empty completion (expected non-empty text"),
    ("prm", [STEPS, {**STEPS, "prompt": LONG}], {}, {"max_length": 24}, "row 1: field 'prompt': prompt too long"),
    ("prm", [STEPS, {**STEPS, "completions": [LONG, "is four."]}], {}, {"max_length": 24},
     "row 1: field 'completions': first step cut off (expected a first step that ends within max_length=24 tokens, "
     "got 'it ends at token"),
]


@pytest.mark.parametrize("algorithm,rows,spec,config,message", CASES)
def test_bad_row_error_names_file_row_and_field(tmp_path, algorithm, rows, spec, config, message):
    path = _write(tmp_path, rows)
    with pytest.raises(ValueError) as err:
        _prepare(path, algorithm, tmp_path, spec=spec, **config)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)
    assert "on_bad_row: skip" in str(err.value)


def _kd_row(**overrides):
    row = {"input_ids": [10, 11, 12, 13], "completion_mask": [0, 1, 1, 1],
           "target_token_ids": [[], [11, 5], [12, 5], [13, 5]], "target_logprobs": [[], [-0.1, -2.0]] + [[-0.2, -3.0]] * 2}
    return {**row, **overrides}


KD_CASES = [
    (_kd_row(target_token_ids=[[], [11, 5], [12, 5]]), {},
     "field 'target_token_ids': bad teacher targets (expected one list per token of the tokenised row (4 entries), "
     "got '3 entries')"),
    (_kd_row(target_token_ids=[[], [11, 5], [12], [13, 5]]), {},
     "field 'target_token_ids': bad teacher targets (expected at position 2: K ids >= 0 and K logprobs"),
    (_kd_row(target_token_ids=[[], [11, 5], [12, 5, 6], [13, 5]],
             target_logprobs=[[], [-0.1, -2.0], [-0.2, -3.0, -4.0], [-0.2, -3.0]]), {},
     "field 'target_token_ids': bad teacher targets (expected the same number of ids at every position"),
    (_kd_row(target_token_ids=[[11, 5], [], [], []], target_logprobs=[[-1.0, -2.0], [], [], []]), {},
     "field 'target_token_ids': bad teacher targets (expected teacher data on at least one kept completion token)"),
    (_kd_row(), {"kd_top_k": 3}, "field 'target_token_ids': bad teacher targets (expected at position 1: at least"),
    (_kd_row(target_logprobs=None), {}, "field 'target_logprobs': missing field"),
]


@pytest.mark.parametrize("row,config,message", KD_CASES)
def test_bad_kd_rows(tmp_path, row, config, message):
    path = _write(tmp_path, [row])
    with pytest.raises(ValueError, match=re.escape(f"{path}: row 0: {message}")):
        _prepare(path, "kd", tmp_path, **config)


def test_kd_top_k_keeps_the_most_likely_ids(tmp_path):
    row = _kd_row(target_token_ids=[[], [5, 11, 6], [12, 5, 6], [7, 13]],
                  target_logprobs=[[], [-2.0, -0.1, -3.0], [-0.2, -3.0, -1.0], [-5.0, -0.3]])
    ds = _prepare(_write(tmp_path, [row]), "kd", tmp_path, kd_top_k=2)
    assert ds[0]["target_token_ids"] == [[], [11, 5], [12, 6], [13, 7]]


def test_template_error_is_a_bad_row(tmp_path):
    strict = ("{% if messages[0]['role'] != 'user' %}{{ raise_exception('the first message must be a user message') }}"
              "{% endif %}{% for m in messages %}{{ m['role'] + ': ' + m['content'] + eos_token }}{% endfor %}"
              "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
            {"messages": [{"role": "system", "content": "be brief"}, {"role": "assistant", "content": "yo"}]}]
    with pytest.raises(ValueError, match=r"row 1: field 'messages': chat template failed .*first message must be a user"):
        _prepare(_write(tmp_path, rows), "sft", tmp_path, chat_template=strict)


def test_skip_logs_one_line_per_reason(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="fusedrl.engine.data")
    ds, batch = prepare("bad_preference.jsonl", "dpo", tmp_path, on_bad_row="skip", max_length=32)
    assert len(ds) == 2 and batch["input_ids"].shape[0] == 4
    source = FIXTURES / "bad_preference.jsonl"
    lines = sorted(r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped"))
    assert lines == sorted([
        f"skipped 1 of 6 rows of {source}: missing field 'chosen' (rows 1)",
        f"skipped 1 of 6 rows of {source}: empty completion 'chosen' (rows 2)",
        f"skipped 1 of 6 rows of {source}: wrong type 'chosen' (rows 3)",
        f"skipped 1 of 6 rows of {source}: prompt too long 'prompt' (rows 4)",
    ])


def test_skip_counts_rows_of_each_file(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="fusedrl.engine.data")
    ds, _ = prepare("sharded", "sft", tmp_path, on_bad_row="skip")
    assert len(ds) == 4
    assert f"empty completion 'completion' (rows {FIXTURES / 'sharded' / 'part-1.jsonl'}:1)" in caplog.text
    with pytest.raises(ValueError, match=re.escape(f"{FIXTURES / 'sharded' / 'part-1.jsonl'}: row 1: field 'completion'")):
        prepare("sharded", "sft", tmp_path)


def test_all_bad_dataset_fails_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"all_bad.jsonl: no usable rows to train on \(empty completion 'chosen' in 2 rows\)"):
        prepare("all_bad.jsonl", "dpo", tmp_path, on_bad_row="skip")
    with pytest.raises(ValueError, match=r"all_bad.jsonl: row 0: field 'chosen': empty completion"):
        prepare("all_bad.jsonl", "dpo", tmp_path)


def test_empty_dataset_fails_clearly():
    empty = datasets.Dataset.from_dict({"text": []}, features=datasets.Features({"text": datasets.Value("string")}))
    with pytest.raises(ValueError, match=r"<in-memory dataset>: no usable rows to train on \(it has no rows\)"):
        tokenize_dataset(empty, tiny_tokenizer(), "sft")


def test_config_checks():
    with pytest.raises(ValueError, match="on_bad_row: expected one of"):
        DataConfig(on_bad_row="ignore")
    with pytest.raises(ValueError, match="max_prompt_length: expected 1 <= max_prompt_length < max_length=8"):
        DataConfig(max_length=8, max_prompt_length=8)
    with pytest.raises(ValueError, match="unknown key 'feild'"):
        DatasetSpec.from_dict({"path": "x", "feild": 1})
    with pytest.raises(ValueError, match="algorithm: expected one of"):
        data_kind("dpoo")
    assert data_kind("simpo") == "pairwise" and data_kind("grpo") == "prompt" and data_kind("kd") == "kd"


def test_blank_question_is_an_empty_prompt(tmp_path):
    rows = [{"question": "  ", "chosen": "a", "rejected": "b"}]
    with pytest.raises(ValueError, match=r"row 0: field 'question': empty prompt \(expected non-empty text"):
        _prepare(_write(tmp_path, rows), "dpo", tmp_path, spec={"type": "chatml.intel"})


def test_all_masked_tokenized_rows_are_skipped(tmp_path, caplog):
    rows = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [5, 6, 7], "labels": [-100, -100, -100]}]
    with caplog.at_level(logging.WARNING):
        ds = _prepare(_write(tmp_path, rows), "sft", tmp_path, on_bad_row="skip")
    assert len(ds) == 1 and "empty completion 'labels'" in caplog.text
