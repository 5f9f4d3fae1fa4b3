"""The causal shift, padding, KD alignment, KTO mismatched pairs and packing."""
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenizer_fixture import FIXTURES, label_text, prepare, tiny_tokenizer

from fusedrl.engine.data import DataConfig, make_collator, prepare_dataset, shift_labels
from fusedrl.engine.data.collate import collate_sft, pad

TRAINING = [
    ("trl_preference.jsonl", "dpo", {}),
    ("trl_preference_implicit.jsonl", "dpo", {}),
    ("trl_unpaired.jsonl", "kto", {}),
    ("trl_messages.jsonl", "sft", {}),
    ("trl_prompt_completion.jsonl", "sft", {}),
    ("trl_text.jsonl", "sft", {}),
    ("swift_preference.jsonl", "orpo", {}),
    ("swift_kto.jsonl", "kto", {}),
    ("axolotl_chatml_intel.jsonl", "dpo", {"type": "chatml.intel"}),
    ("axolotl_chat_template_default.jsonl", "rm", {}),
    ("tokenized.jsonl", "sft", {}),
    ("kd_tokenized.jsonl", "kd", {}),
]


def _sequences(ds, algorithm):
    """Unshifted (input_ids, completion_mask) pairs in batch row order."""
    if algorithm in ("dpo", "orpo", "rm"):
        return [(r[f"{side}_input_ids"], r[f"{side}_completion_mask"]) for side in ("chosen", "rejected") for r in ds]
    return [(r["input_ids"], r["completion_mask"]) for r in ds]


@pytest.mark.parametrize("name,algorithm,spec", TRAINING, ids=[t[0] for t in TRAINING])
def test_labels_are_completion_tokens_shifted_by_one(tmp_path, name, algorithm, spec):
    ds, batch = prepare(name, algorithm, tmp_path, spec=spec)
    labels, ids, attention = batch["labels"], batch["input_ids"], batch["attention_mask"]
    assert labels[:, -1].eq(-100).all()
    for b, (seq, mask) in enumerate(_sequences(ds, algorithm)):
        n = len(seq)
        assert ids[b, :n].tolist() == seq and attention[b, :n].all() and not attention[b, n:].any()
        assert labels[b, n - 1:].eq(-100).all() and ids[b, n:].eq(0).all()  # right padding
        expected = [seq[t + 1] if mask[t + 1] else -100 for t in range(n - 1)]
        assert labels[b, : n - 1].tolist() == expected
        # prompt tokens (before the first completion token) never carry loss
        first = mask.index(1)
        assert labels[b, : max(first - 1, 0)].eq(-100).all()
        assert sum(mask[1:]) == int(labels[b].ne(-100).sum())


def test_shift_labels_by_hand():
    ids = torch.tensor([5, 6, 7, 8, 9])
    mask = torch.tensor([0, 0, 1, 1, 0])
    assert shift_labels(ids, mask).tolist() == [-100, 7, 8, -100, -100]


def test_kd_targets_are_shifted_next_to_the_labels(tmp_path):
    _, batch = prepare("kd_tokenized.jsonl", "kd", tmp_path)
    assert batch["target_token_ids"].shape == (3, 5, 2) and batch["target_token_ids"].dtype == torch.int64
    assert batch["target_logprobs"].dtype == torch.float32 and batch["target_mask"].dtype == torch.bool
    assert batch["labels"][0].tolist() == [-100, 12, 13, 14, -100]
    assert batch["target_mask"][0].tolist() == [False, True, True, True, False]
    assert batch["target_token_ids"][0, 1].tolist() == [12, 51]
    assert batch["target_logprobs"][0, 3].tolist() == pytest.approx([-0.4, -1.2])
    # row 1: target_mask switches token 2 off, so position 1 (which predicts token 2) has no target
    assert batch["labels"][1].tolist() == [21, 22, 23, -100, -100]
    assert batch["target_mask"][1].tolist() == [True, False, True, False, False]
    # the fixture's teacher puts the true next token first: where a target exists it equals the label
    on = batch["target_mask"]
    assert torch.equal(batch["target_token_ids"][..., 0][on], batch["labels"][on])
    assert batch["target_token_ids"][~on].eq(0).all() and batch["target_logprobs"][~on].eq(0).all()


def test_kd_alignment_survives_template_and_truncation(tmp_path):
    tok = tiny_tokenizer()
    config = DataConfig(max_length=20, max_prompt_length=8, cache_dir=str(tmp_path))
    rows = [json.loads(line) for line in (FIXTURES / "trl_messages.jsonl").read_text().splitlines()]
    sft = prepare_dataset({"path": str(FIXTURES / "trl_messages.jsonl")}, tok, "sft",
                          DataConfig(max_length=512, cache_dir=str(tmp_path)))
    for row, full in zip(rows, sft):
        ids = full["input_ids"]  # untruncated tokens; teacher top-1 = true token, top-2 = a fixed other id
        row["target_token_ids"] = [[]] + [[t, 7] for t in ids[1:]]
        row["target_logprobs"] = [[]] + [[-0.1, -2.3]] * (len(ids) - 1)
    (tmp_path / "kd.jsonl").write_text("\n".join(map(json.dumps, rows)))
    ds = prepare_dataset({"path": str(tmp_path / "kd.jsonl")}, tok, "kd", config)
    batch = make_collator("kd", tok.pad_token_id, config)(list(ds))
    assert batch["input_ids"].shape[1] <= 20
    on = batch["target_mask"]
    assert torch.equal(on, batch["labels"] != -100)
    assert torch.equal(batch["target_token_ids"][..., 0][on], batch["labels"][on])


def test_kto_mismatched_pairs_rotate_completions(tmp_path):
    tok = tiny_tokenizer()
    ds, batch = prepare("trl_unpaired.jsonl", "kto", tmp_path)
    completions = label_text(tok, batch["labels"])
    kl_completions = label_text(tok, batch["kl_labels"])
    assert kl_completions == completions[1:] + completions[:1]
    kl_text = tok.decode(batch["kl_input_ids"][3][batch["kl_attention_mask"][3].bool()])
    assert kl_text.startswith("<|im_start|>user\nWhat colour is the grass?") and "Four." in kl_text
    with pytest.raises(ValueError, match="kto batches need >= 2 rows"):
        make_collator("kto", 0)(list(ds)[:1])
    single = make_collator("kto", 0, DataConfig(kl_pairs=False))(list(ds)[:1])  # apo_zero_unpaired, bco
    assert set(single) == {"input_ids", "attention_mask", "labels", "kto_label"}
    paired = make_collator("kto", 0)(list(ds)[:2])
    assert torch.equal(single["labels"], paired["labels"][:1, :single["labels"].shape[1]])


def test_kto_mismatched_pairs_are_cut_to_max_length():
    rows = [
        {"input_ids": [1, 2, 3, 4], "completion_mask": [0, 1, 1, 1], "label": True},
        {"input_ids": [5, 6, 7, 8, 9, 10, 11, 12], "completion_mask": [0] * 7 + [1], "label": False},
    ]
    batch = make_collator("kto", 0, DataConfig(max_length=8))(rows)
    assert batch["kl_input_ids"].tolist() == [[1, 12, 0, 0, 0, 0, 0, 0], [5, 6, 7, 8, 9, 10, 11, 2]]
    assert batch["kl_labels"].tolist() == [[12] + [-100] * 7, [-100] * 6 + [2, -100]]
    assert batch["kto_label"].tolist() == [True, False]


def test_prompts_are_left_padded(tmp_path):
    _, batch = prepare("trl_prompt_only.jsonl", "grpo", tmp_path)
    ids, mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    assert mask[:, -1].all() and not mask[0, 0] and ids[0, 0] == 0
    assert (mask.sum(1) > 0).all() and torch.equal(mask.flip(1).cummin(1).values, mask.flip(1))


def test_pad_both_sides():
    seqs = [torch.tensor([1, 2, 3]), torch.tensor([4])]
    assert pad(seqs, 0).tolist() == [[1, 2, 3], [4, 0, 0]]
    assert pad(seqs, -1, side="left").tolist() == [[1, 2, 3], [-1, -1, 4]]


def test_packing_resets_positions_and_masks_boundaries(tmp_path):
    ds, plain = prepare("trl_prompt_completion.jsonl", "sft", tmp_path)
    packed = make_collator("sft", 0, DataConfig(packing=True, max_length=128))(list(ds))
    lengths = [len(r["input_ids"]) for r in ds]
    assert packed["input_ids"].shape == (1, sum(lengths))
    starts = torch.tensor([0, lengths[0], lengths[0] + lengths[1]])
    assert packed["position_ids"][0, starts].eq(0).all()
    assert packed["labels"][0, starts[1:] - 1].eq(-100).all()  # never predict across a boundary
    flat_labels = torch.cat([plain["labels"][i, :n] for i, n in enumerate(lengths)])
    assert torch.equal(packed["labels"][0], flat_labels)
    with pytest.raises(ValueError, match="only sft and kd batches can be packed"):
        make_collator("dpo", 0, DataConfig(packing=True))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(2, 9), min_size=1, max_size=6), st.integers(9, 20))
def test_packing_property(lengths, max_length):
    rows, next_id = [], 1
    for n in lengths:
        rows.append({"input_ids": list(range(next_id, next_id + n)), "completion_mask": [0] + [1] * (n - 1)})
        next_id += n
    batch = collate_sft(rows, pad_token_id=0, packing=True, max_length=max_length)
    assert batch["input_ids"].shape[1] <= max_length
    real = batch["attention_mask"].bool()
    assert batch["input_ids"][real].tolist() == list(range(1, next_id))  # every token once, in order
    assert int(batch["labels"].ne(-100).sum()) == sum(n - 1 for n in lengths)
    assert int(batch["position_ids"][real].eq(0).sum()) == len(lengths)
