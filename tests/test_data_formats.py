"""Every supported row format, from its fixture file to the batch of the algorithm it feeds."""
import copy

import datasets
import pytest
import torch

from tokenizer_fixture import label_text, prepare, tiny_tokenizer

from fusedrl.engine.data import FORMATS, detect_format, make_collator, tokenize_dataset

END = "<|im_end|>"
PAIRWISE = {"input_ids", "attention_mask", "labels"}
KTO = PAIRWISE | {"kto_label", "kl_input_ids", "kl_attention_mask", "kl_labels"}

# fixture, algorithm, extra spec keys, label text of (first chosen, first rejected) or first rows
PAIRS = [
    ("trl_preference.jsonl", "rm", {}, " Two plus two is four." + END, " It is five." + END),
    ("trl_preference_conversational.jsonl", "dpo", {}, "Four." + END, "Five." + END),
    ("trl_preference_implicit.jsonl", "dpo", {}, "Four." + END, "Twenty two." + END),
    ("swift_preference.jsonl", "dpo", {}, "Four." + END, "Five." + END),
    ("axolotl_chatml_intel.jsonl", "dpo", {"type": "chatml.intel"}, "Two plus two is four." + END, "Five." + END),
    ("axolotl_chatml_argilla.jsonl", "orpo", {"type": "chatml.argilla"}, "Four." + END, "Twenty two." + END),
    ("axolotl_chatml_ultra.jsonl", "simpo", {"type": "chatml.ultra"}, "Four." + END, "Five." + END),
    ("axolotl_chat_template_default.jsonl", "cpo", {"type": "chat_template.default"}, "Four." + END, "Five." + END),
]


@pytest.mark.parametrize("name,algorithm,spec,chosen,rejected", PAIRS, ids=[p[0] for p in PAIRS])
def test_pairwise_formats(tmp_path, name, algorithm, spec, chosen, rejected):
    tok = tiny_tokenizer()
    ds, batch = prepare(name, algorithm, tmp_path, spec=spec)
    b = len(ds)
    assert PAIRWISE <= set(batch) and batch["input_ids"].shape[0] == 2 * b
    texts = label_text(tok, batch["labels"])
    assert texts[0] == chosen and texts[b] == rejected
    prompt_lengths = [int((lab != -100).nonzero()[0]) + 1 for lab in batch["labels"]]
    for i in range(b):  # chosen and rejected share the same prompt tokens
        assert prompt_lengths[i] == prompt_lengths[b + i]
        assert torch.equal(batch["input_ids"][i, : prompt_lengths[i]], batch["input_ids"][b + i, : prompt_lengths[i]])


def test_reward_margin_and_system_prompts(tmp_path):
    tok = tiny_tokenizer()
    _, batch = prepare("trl_preference.jsonl", "rm", tmp_path)
    assert batch["margin"].tolist() == [1.5, 0.5, 2.0, 0.0] and batch["margin"].dtype == torch.float32
    _, batch = prepare("axolotl_chatml_intel.jsonl", "dpo", tmp_path, spec={"type": "chatml.intel"})
    first, blank_system = tok.decode(batch["input_ids"][0]), tok.decode(batch["input_ids"][1])
    assert first.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is")
    assert blank_system.startswith("<|im_start|>user\nWhat colour")
    _, batch = prepare("axolotl_chatml_ultra.jsonl", "dpo", tmp_path, spec={"type": "chatml.ultra"})
    assert tok.decode(batch["input_ids"][0]).startswith(
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nWhat is two plus two?<|im_end|>\n"
        "<|im_start|>assistant\nFour.<|im_end|>"
    )


def test_implicit_prompt_keeps_earlier_turns_as_prompt(tmp_path):
    tok = tiny_tokenizer()
    _, batch = prepare("trl_preference_implicit.jsonl", "dpo", tmp_path)
    texts = label_text(tok, batch["labels"])
    assert texts[2] == "Blue." + END and texts[5] == "Green." + END
    assert "Hello!" in tok.decode(batch["input_ids"][2])


SFT = [
    ("trl_prompt_completion.jsonl", {}, [" four" + END, " blue" + END, " Paris" + END]),
    ("trl_prompt_completion.csv", {}, [" four" + END, " Paris" + END]),
    ("trl_messages.jsonl", {}, ["Four." + END, "Hello! How can I help?" + END + "Paris." + END,
                                "The sea is blue and the moon is bright." + END]),
    ("axolotl_sharegpt.jsonl", {"type": "chat_template", "columns": {"conversations": "messages"}},
     ["Four." + END, "Paris." + END]),
]


@pytest.mark.parametrize("name,spec,expected", SFT, ids=[s[0] for s in SFT])
def test_sft_formats(tmp_path, name, spec, expected):
    tok = tiny_tokenizer()
    _, batch = prepare(name, "sft", tmp_path, spec=spec)
    assert set(batch) == PAIRWISE
    assert label_text(tok, batch["labels"]) == expected


def test_text_rows_train_on_every_token_after_bos(tmp_path):
    tok = tiny_tokenizer(add_bos=True)
    _, batch = prepare("trl_text.jsonl", "sft", tmp_path, tokenizer=tok)
    assert (batch["input_ids"][:, 0] == tok.bos_token_id).all()
    assert label_text(tok, batch["labels"])[1] == "Paris is the capital of France." + END
    plain = tiny_tokenizer()
    _, batch = prepare("trl_text.jsonl", "sft", tmp_path, tokenizer=plain)
    text = "Paris is the capital of France." + END
    assert text.endswith(label_text(plain, batch["labels"])[1]) and label_text(plain, batch["labels"])[1] != text


def test_pretokenized_rows_keep_their_mask(tmp_path):
    _, batch = prepare("tokenized.jsonl", "sft", tmp_path)
    assert batch["labels"][2].tolist() == [-100, 32, -100, 34, -100, -100]
    assert batch["input_ids"][1].tolist() == [20, 21, 22, 23, 0, 0]


KTO_CASES = [
    ("trl_unpaired.jsonl", {}, [True, False, True, False]),
    ("swift_kto.jsonl", {}, [True, False, True]),
    ("axolotl_chatml_intel_kto.jsonl", {"type": "chatml.intel"}, [True, False, True]),
    ("trl_preference.jsonl", {}, [True, False] * 4),
]


@pytest.mark.parametrize("name,spec,labels", KTO_CASES, ids=[k[0] for k in KTO_CASES])
def test_kto_formats(tmp_path, name, spec, labels):
    _, batch = prepare(name, "kto", tmp_path, spec=spec)
    assert set(batch) == KTO
    assert batch["kto_label"].dtype == torch.bool and batch["kto_label"].tolist() == labels


def test_kto_from_pairs_gives_chosen_then_rejected(tmp_path):
    tok = tiny_tokenizer()
    _, batch = prepare("trl_preference.jsonl", "kto", tmp_path)
    texts = label_text(tok, batch["labels"])
    assert texts[:2] == [" Two plus two is four." + END, " It is five." + END]


PROMPTS = [
    ("trl_prompt_only.jsonl", {"solution": ["4", "Paris", "blue"], "difficulty": [1, 2, 1]}),
    ("swift_grpo.jsonl", {"solution": ["4", "Paris"]}),
]


@pytest.mark.parametrize("name,extra", PROMPTS, ids=[p[0] for p in PROMPTS])
def test_prompt_formats_keep_other_columns(tmp_path, name, extra):
    tok = tiny_tokenizer()
    _, batch = prepare(name, "grpo", tmp_path)
    assert set(batch) == {"prompt_input_ids", "prompt_attention_mask", "prompts", *extra}
    assert {k: batch[k] for k in extra} == extra
    assert batch["prompts"][0] == [{"role": "user", "content": "What is two plus two?"}]
    ids, mask = batch["prompt_input_ids"][0], batch["prompt_attention_mask"][0]
    assert tok.decode(ids[mask.bool()]) == (
        "<|im_start|>user\nWhat is two plus two?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_prompt_of_a_conversation_drops_its_last_reply(tmp_path):
    _, batch = prepare("trl_messages.jsonl", "ppo", tmp_path)
    assert batch["prompts"][1] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Capital of France?"},
    ]
    _, batch = prepare("trl_preference.jsonl", "grpo", tmp_path)
    assert batch["prompts"][0] == "What is two plus two?" and "margin" not in batch


def test_template_family_chatml_overrides_tokenizer_template(tmp_path):
    tok = copy.deepcopy(tiny_tokenizer(chat_template=False))
    tok.chat_template = (
        "{% for m in messages %}{{ '### ' + m['role'] + ': ' + m['content'] + eos_token + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '### assistant: ' }}{% endif %}"
    )
    _, batch = prepare("axolotl_chatml_intel.jsonl", "dpo", tmp_path, tokenizer=tok, spec={"type": "chatml.intel"})
    assert tok.decode(batch["input_ids"][1]).startswith("<|im_start|>user\n")
    _, batch = prepare("axolotl_chatml_intel.jsonl", "dpo", tmp_path, tokenizer=tok, spec={"type": "llama3.intel"})
    assert tok.decode(batch["input_ids"][1]).startswith("### user: What colour is the sky?" + END)
    assert label_text(tok, batch["labels"])[1] == "Blue." + END


def test_tokenizer_without_template_falls_back_to_chatml(tmp_path, caplog):
    tok = tiny_tokenizer(chat_template=False)
    _, batch = prepare("trl_messages.jsonl", "sft", tmp_path, tokenizer=tok)
    assert "no chat template; using chatml" in caplog.text
    assert tok.decode(batch["input_ids"][2]).startswith("<|im_start|>user\nWrite about the sea.")


def test_named_or_inline_template(tmp_path):
    tok = tiny_tokenizer()
    inline = "{% for m in messages %}{{ m['role'] + '> ' + m['content'] + eos_token }}{% endfor %}" \
             "{% if add_generation_prompt %}{{ 'assistant> ' }}{% endif %}"
    _, batch = prepare("trl_messages.jsonl", "sft", tmp_path, chat_template=inline)
    assert tok.decode(batch["input_ids"][2]).startswith("user> Write about the sea." + END + "assistant> The sea")
    assert label_text(tok, batch["labels"])[2] == "The sea is blue and the moon is bright." + END


@pytest.mark.parametrize("columns,expected", [
    (["prompt", "chosen", "rejected"], "preference"),
    (["chosen", "rejected"], "preference"),
    (["prompt", "completion", "label"], "unpaired_preference"),
    (["prompt", "completion"], "prompt_completion"),
    (["messages"], "messages"),
    (["messages", "rejected_response"], "swift.preference"),
    (["messages", "label"], "swift.kto"),
    (["messages", "chosen", "rejected"], "chat_template.default"),
    (["system", "question", "chosen", "rejected"], "intel"),
    (["question", "completion", "label"], "intel"),
    (["instruction", "chosen_response", "rejected_response"], "argilla"),
    (["text"], "text"),
    (["prompt", "solution"], "prompt_only"),
    (["input_ids", "labels"], "tokenized"),
])
def test_detect_format(columns, expected):
    assert detect_format(columns, "x") == expected and expected in FORMATS


def test_unknown_columns_or_type_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"cannot tell the data format from columns \['foo'\]"):
        detect_format(["foo"], "data.jsonl")
    with pytest.raises(ValueError, match=r"type: expected one of .*got 'chatml.nope'"):
        prepare("trl_preference.jsonl", "dpo", tmp_path, spec={"type": "chatml.nope"})


USER, ANSWER, WRONG = ({"role": "user", "content": "Sky colour?"}, {"role": "assistant", "content": "Blue."},
                       {"role": "assistant", "content": "Green."})
AXOLOTL_ROWS = [
    ("chatml.icr", "dpo", {"system": "Be brief.", "input": "Sky colour?", "chosen": "Blue.", "rejected": "Green."}),
    ("chatml.prompt_pairs", "dpo", {"prompt": "Sky colour?", "chosen": "Blue.", "rejected": "Green."}),
    ("chatml.argilla_chat", "dpo", {"chosen": [USER, ANSWER], "rejected": [USER, WRONG]}),
    ("chat_template.argilla", "dpo", {"prompt": "Sky colour?", "chosen": [ANSWER], "rejected": [WRONG]}),
    ("chatml.argilla", "kto", {"instruction": "Sky colour?", "completion": "Blue.", "label": True}),
    ("chatml.ultra", "kto", {"system": "Be brief.", "prompt": "Sky colour?", "completion": "Blue.", "label": True}),
    ("chatml.prompt_pairs", "kto", {"prompt": "Sky colour?", "completion": "Blue.", "label": True}),
]


@pytest.mark.parametrize("fmt,algorithm,row", AXOLOTL_ROWS, ids=[f"{a[0]}-{a[1]}" for a in AXOLOTL_ROWS])
def test_other_axolotl_types(fmt, algorithm, row):
    tok = tiny_tokenizer()
    ds = tokenize_dataset(datasets.Dataset.from_list([row, row]), tok, algorithm, format=fmt)
    batch = make_collator(algorithm, tok.pad_token_id)(list(ds))
    assert label_text(tok, batch["labels"])[0] == "Blue." + END
    text = tok.decode(batch["input_ids"][0])
    assert "<|im_start|>user\nSky colour?<|im_end|>\n<|im_start|>assistant\nBlue." in text
    assert text.startswith("<|im_start|>system\nBe brief.") == ("system" in row)
