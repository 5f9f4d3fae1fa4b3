"""On-policy distillation (``rl: kd`` with ``kd_teacher`` and ``kd_on_policy_ratio``, GKD): the student's own
replies to the data's prompts, scored by the live teacher's top-k."""
import json
import random
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from engine_fixtures import DEMO_HELDOUT, REPO, save_tiny_model
from tokenizer_fixture import FIXTURES
from test_kd_extract import sharp_teacher
from fusedrl.engine.algorithms import build_algorithm
from fusedrl.engine.config import ConfigError, config_from_dict
from fusedrl.engine.data import DataConfig, make_collator, pad_token_id, prepare_dataset
from fusedrl.engine.models import load_tokenizer
from fusedrl.engine.rollout import completion_prompts
from fusedrl.engine.trainer import train

SFT_DATA = REPO / "data" / "demo" / "sft_train.jsonl"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("kd-on-policy")
    return sharp_teacher(root / "teacher"), save_tiny_model(root / "student", seed=2)


def on_policy_config(models, out, **extra) -> dict:
    teacher, student = models
    return {"base_model": str(student), "rl": "kd", "kd_teacher": str(teacher), "kd_top_k": 8,
            "kd_on_policy_ratio": 1.0, "datasets": [{"path": str(SFT_DATA)}], "output_dir": str(out),
            "max_length": 160, "micro_batch_size": 4, "max_steps": 3, "max_completion_length": 10,
            "learning_rate": 5e-3, "lr_scheduler": "constant", "kernel_backend": "torch", "tensorboard": False,
            "plot": False, "progress_bar": False, **extra}


def sft_batch(tokenizer, path, rows: int) -> dict:
    """The first ``rows`` rows of ``path`` (fewer when it has fewer) as one SFT batch."""
    data = prepare_dataset([{"path": str(path)}], tokenizer, "sft", DataConfig(max_length=160))
    return make_collator("sft", pad_token_id(tokenizer))([data[i] for i in range(min(rows, len(data)))])


@pytest.mark.parametrize("path", [SFT_DATA, FIXTURES / "trl_prompt_completion.jsonl", FIXTURES / "trl_messages.jsonl"],
                         ids=["conversational", "text", "multi-turn"])
def test_completion_prompts_are_what_the_last_reply_follows(models, path):
    """The prompt of each SFT row, cut at its last completion span, is the prompt the data gives for
    generation (GRPO's prompt rows: the template with its generation header, earlier turns included)."""
    tokenizer = load_tokenizer(str(models[1]))
    batch = sft_batch(tokenizer, path, 6)
    prompt_rows = prepare_dataset([{"path": str(path)}], tokenizer, "grpo", DataConfig(max_length=160))
    ids, mask = completion_prompts(batch["input_ids"], batch["labels"], pad_token_id(tokenizer))
    assert ids.shape[0] == len(batch["input_ids"]) >= 3 and bool(mask[:, -1].all())  # left padded
    for row, (row_ids, row_mask) in enumerate(zip(ids, mask)):
        assert row_ids[row_mask.bool()].tolist() == prompt_rows[row]["prompt_ids"], row
    with pytest.raises(ValueError, match="row 1 of the batch has no completion tokens"):
        completion_prompts(batch["input_ids"], torch.where(torch.arange(len(ids))[:, None] == 1, -100,
                                                           batch["labels"]), 0)


def test_plain_text_rows_continue_their_first_token(models):
    """A text row trains on every token after the first, so its reply is sampled from that token alone."""
    tokenizer = load_tokenizer(str(models[1]))
    batch = sft_batch(tokenizer, FIXTURES / "trl_text.jsonl", 3)
    ids, mask = completion_prompts(batch["input_ids"], batch["labels"], pad_token_id(tokenizer))
    assert ids.shape[1] == 1 and bool(mask.all()) and ids[:, 0].tolist() == batch["input_ids"][:, 0].tolist()


def test_on_policy_step_distils_the_teachers_topk_on_the_students_own_reply(models, tmp_path):
    """With top_k 1 the student samples greedily, so its replies are those of its own ``generate``; the
    update's micro-batches hold prompt + reply with labels on the reply (EOS included), and the loss is the
    forward KL of the teacher's renormalised top-8 to the student over those positions (full logits here)."""
    teacher_dir, student_dir = models
    config = config_from_dict(on_policy_config(models, tmp_path, top_k=1, micro_batch_size=3, kd_ce_alpha=0.5))
    algorithm = build_algorithm(config, torch.device("cpu"))
    batch = sft_batch(algorithm.tokenizer, SFT_DATA, 5)
    (update,) = algorithm.updates([batch])
    assert [len(m["input_ids"]) for m in update] == [3, 2] and all(m["on_policy"] for m in update)

    student = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    prompts, prompt_mask = completion_prompts(batch["input_ids"], batch["labels"], algorithm.pad_token_id)
    eos = algorithm.tokenizer.eos_token_id
    greedy = student.generate(input_ids=prompts, attention_mask=prompt_mask, do_sample=False, max_new_tokens=10,
                              eos_token_id=eos, pad_token_id=algorithm.pad_token_id)
    offset = 0
    for micro in update:
        loss, metrics = algorithm.loss(micro)
        assert "ce_loss" not in metrics and metrics["on_policy"] == 1.0  # no CE on the student's own samples
        kd, positions = 0.0, 0
        for row, (ids, labels, mask) in enumerate(zip(micro["input_ids"], micro["labels"], micro["attention_mask"])):
            real = ids[mask.bool()]
            prompt = prompts[offset + row][prompt_mask[offset + row].bool()].tolist()
            reply = greedy[offset + row, prompts.shape[1]:].tolist()
            if eos in reply:
                reply = reply[:reply.index(eos) + 1]
            assert real.tolist() == prompt + reply
            trained = labels[mask.bool()] != -100
            assert labels[mask.bool()][trained].tolist() == reply
            with torch.no_grad():
                lt = torch.log_softmax(teacher(real[None]).logits[0].float(), -1)[trained]
                ls = torch.log_softmax(student(real[None]).logits[0].float(), -1)[trained]
            top, index = lt.topk(8, dim=-1)
            p = torch.softmax(top, -1)
            kd += (p * (p.log() - ls.gather(1, index))).sum().item()
            positions += int(trained.sum())
        offset += len(micro["input_ids"])
        assert metrics["kd_loss"] == pytest.approx(kd / positions, rel=1e-4)
        assert loss.item() == pytest.approx(kd / positions, rel=1e-4)


@pytest.mark.parametrize("teacher_replies", [False, True], ids=["data-replies", "teacher-replies"])
def test_on_policy_steps_are_drawn_per_step_and_resume_exactly(models, tmp_path, teacher_replies):
    """Half the steps (drawn from the seed and the step) sample the student's replies; the others train with
    the CE term on the data's replies, or on the teacher's (``kd_teacher_replies``). Text samples are logged
    for sampling steps only. A run resumed from its step-3 checkpoint draws the same steps, samples the same
    replies and ends with the same weights."""
    raw = on_policy_config(models, tmp_path / "full", kd_on_policy_ratio=0.5, kd_ce_alpha=0.5, max_steps=6,
                           save_steps=3, save_total_limit=None, seed=5, kd_teacher_replies=teacher_replies)
    train(config_from_dict(raw))
    records = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    drawn = [float(random.Random(f"5:{i}").random() < 0.5) for i in range(6)]
    assert [r["on_policy"] for r in records] == drawn and 0 < sum(drawn) < 6
    for r in records:
        assert ("completions/mean_length" in r) == bool(r["on_policy"]) == ("ce_loss" not in r)
        assert ("teacher_completions/mean_length" in r) == (teacher_replies and not r["on_policy"])
    samples = [json.loads(line) for line in (tmp_path / "full" / "samples.jsonl").read_text().splitlines()]
    sampled = [r["step"] for r in records if r["on_policy"] or teacher_replies]
    assert [s["step"] for s in samples] == sampled
    assert all("**completion**" in s["text"] for s in samples)

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-3", resumed / "checkpoint-3")
    shutil.copy(tmp_path / "full" / "metrics.jsonl", resumed / "metrics.jsonl")
    train(config_from_dict({**raw, "output_dir": str(resumed), "resume_from_checkpoint": "latest"}))
    again = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "on_policy", "kd_loss"):
        assert [r.get(key) for r in again] == [r.get(key) for r in records], key
    expected = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    got = load_file(str(resumed / "final" / "model.safetensors"))
    assert [name for name in expected if not torch.equal(got[name], expected[name])] == []


def test_teacher_replies_are_the_teachers_own_and_train_with_cross_entropy(models, tmp_path):
    """``kd_teacher_replies`` with greedy sampling (top_k 1): each row's reply is the teacher's own ``generate``
    output, and the loss is KD on it plus ``kd_ce_alpha`` times the cross-entropy of the teacher's tokens."""
    teacher_dir, _ = models
    config = config_from_dict(on_policy_config(models, tmp_path, top_k=1, kd_on_policy_ratio=0.0,
                                               kd_teacher_replies=True, kd_ce_alpha=0.5, micro_batch_size=5))
    algorithm = build_algorithm(config, torch.device("cpu"))
    batch = sft_batch(algorithm.tokenizer, SFT_DATA, 5)
    ((micro,),) = algorithm.updates([batch])
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    prompts, prompt_mask = completion_prompts(batch["input_ids"], batch["labels"], algorithm.pad_token_id)
    eos = algorithm.tokenizer.eos_token_id
    greedy = teacher.generate(input_ids=prompts, attention_mask=prompt_mask, do_sample=False, max_new_tokens=10,
                              eos_token_id=eos, pad_token_id=algorithm.pad_token_id)
    for row, (ids, mask) in enumerate(zip(micro["input_ids"], micro["attention_mask"])):
        reply = greedy[row, prompts.shape[1]:].tolist()
        reply = reply[:reply.index(eos) + 1] if eos in reply else reply
        assert ids[mask.bool()].tolist() == prompts[row][prompt_mask[row].bool()].tolist() + reply
    loss, metrics = algorithm.loss(micro)
    assert metrics["on_policy"] == 0.0 and "teacher_completions/mean_length" in metrics
    assert loss.item() == pytest.approx(metrics["kd_loss"] + 0.5 * metrics["ce_loss"], rel=1e-5)
    with torch.no_grad():
        logits = algorithm.model(micro["input_ids"], attention_mask=micro["attention_mask"],
                                 position_ids=micro["position_ids"]).logits.float()
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), micro["labels"].flatten(), ignore_index=-100)
    assert metrics["ce_loss"] == pytest.approx(nll.item(), rel=1e-4)


def on_policy_kl(teacher_dir, student_dir, prompts, prompt_mask, new_tokens: int) -> float:
    """Mean KL(teacher || student) per token over the student's greedy replies to ``prompts`` (full logits)."""
    teacher, student = (AutoModelForCausalLM.from_pretrained(d).eval() for d in (teacher_dir, student_dir))
    with torch.no_grad():
        out = student.generate(input_ids=prompts, attention_mask=prompt_mask, do_sample=False,
                               max_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0)
        mask = torch.cat([prompt_mask, torch.ones_like(out[:, prompts.shape[1]:])], 1)
        t, s = (torch.log_softmax(m(out, attention_mask=mask).logits.float(), -1) for m in (teacher, student))
    kl = (t.exp() * (t - s)).sum(-1)[:, prompts.shape[1] - 1:-1]
    return kl.mean().item()


def test_on_policy_distillation_closes_the_gap_on_the_students_own_replies(models, tmp_path):
    """Training only on its own samples, the student's divergence from the teacher on the replies it now
    writes to held-out prompts falls."""
    teacher, student = models
    tokenizer = load_tokenizer(str(student))
    held = tmp_path / "heldout.jsonl"
    held.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["chosen"]}) + "\n"
                            for r in map(json.loads, DEMO_HELDOUT.read_text().splitlines())))
    batch = sft_batch(tokenizer, held, 12)
    prompts, prompt_mask = completion_prompts(batch["input_ids"], batch["labels"], pad_token_id(tokenizer))
    before = on_policy_kl(teacher, student, prompts, prompt_mask, 10)
    train(config_from_dict(on_policy_config(models, tmp_path / "run", max_steps=30, micro_batch_size=8)))
    after = on_policy_kl(teacher, tmp_path / "run" / "final", prompts, prompt_mask, 10)
    assert after < 0.7 * before, (before, after)


@pytest.mark.parametrize("extra, message", [
    ({"kd_teacher": None, "kd_top_k": None}, r"kd_on_policy_ratio: sampled replies need a live kd_teacher"),
    ({"kd_teacher": None, "kd_top_k": None, "kd_on_policy_ratio": 0.0, "kd_teacher_replies": True},
     r"kd_teacher_replies: sampled replies need a live kd_teacher"),
    ({"sample_packing": True, "attn_implementation": "flash_attention_2"},
     r"sample_packing: kd_on_policy_ratio samples a reply per row"),
    ({"kd_on_policy_ratio": 0.0, "temperature": 0.7},
     r"temperature: rl=kd samples only with kd_on_policy_ratio > 0 or kd_teacher_replies: true"),
    ({"kd_on_policy_ratio": 0.0, "max_completion_length": 64}, r"max_completion_length: rl=kd samples only with"),
    ({"kd_on_policy_ratio": 1.5}, r"kd_on_policy_ratio: .*1\.5"),
], ids=["no-teacher", "teacher-replies-no-teacher", "packing", "temperature-unused", "length-unused", "range"])
def test_on_policy_config_errors(models, tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(on_policy_config(models, tmp_path, **extra))


def test_trl_lmbda_and_seq_kd_spellings_are_for_kd_only(models, tmp_path):
    raw = on_policy_config(models, tmp_path)
    del raw["kd_on_policy_ratio"]
    assert config_from_dict({**raw, "lmbda": 0.25}).kd_on_policy_ratio == 0.25
    assert config_from_dict({**raw, "seq_kd": True}).kd_teacher_replies
    with pytest.raises(ConfigError, match="lmbda"):
        config_from_dict({"base_model": str(models[1]), "rl": "sft", "datasets": [{"path": str(SFT_DATA)}],
                          "lmbda": 0.5})
