"""kd-extract: alignment, resumability, tokenizer checks, and a student that gets closer to its teacher."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from engine_fixtures import DEMO_HELDOUT, REPO, save_tiny_model
from tokenizer_fixture import FIXTURES
from fusedrl.engine.cli import main as cli_main
from fusedrl.engine.config import config_from_dict
from fusedrl.engine.data import DataConfig, prepare_dataset
from fusedrl.engine.kd_extract import ExtractConfig, extract, read_metadata
from fusedrl.engine.models import load_tokenizer
from fusedrl.engine.trainer import train

SFT_DATA = REPO / "data" / "demo" / "sft_train.jsonl"


def sharp_teacher(folder):
    """A tiny random model whose lm_head is scaled up: peaked next-token distributions that top-16 covers."""
    save_tiny_model(folder, tie_embeddings=False, seed=1)
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("kd")
    return sharp_teacher(root / "teacher"), save_tiny_model(root / "student", seed=2)


@pytest.fixture(scope="module")
def extracted(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("kd-out") / "targets"
    cfg = ExtractConfig(teacher=str(models[0]), dataset=str(SFT_DATA), output=str(out), top_k=16,
                        max_length=160, batch_size=16, shard_size=64, backend="torch")
    return cfg, extract(cfg, progress=False)


def assert_targets_are_the_teachers_topk(out, teacher_dir, k, temperature=1.0):
    """The first extracted row's targets at each completion position: the teacher's own top-``k`` logprobs of
    the next token at ``temperature`` (from its forward's logits), none elsewhere."""
    row = prepare_dataset([{"path": str(out)}], load_tokenizer(str(teacher_dir)), "kd", DataConfig(max_length=160))[0]
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    with torch.no_grad():
        logits = teacher(torch.tensor([row["input_ids"]])).logits[0].float()
    want = torch.log_softmax(logits / temperature, -1).topk(k, dim=-1)
    for i, mask in enumerate(row["completion_mask"]):
        if i == 0 or not mask:
            assert not row["target_token_ids"][i]
            continue
        assert row["target_token_ids"][i] == want.indices[i - 1].tolist()
        torch.testing.assert_close(torch.tensor(row["target_logprobs"][i]), want.values[i - 1], atol=1e-5, rtol=1e-4)


def test_targets_are_the_teachers_next_token_topk(models, extracted):
    _, out = extracted
    meta = read_metadata(out)
    assert meta["top_k"] == 16 and meta["rows"] == 182 and sorted(p.name for p in out.glob("*.parquet")) == [
        "shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    assert_targets_are_the_teachers_topk(out, models[0], 16)


@pytest.mark.parametrize("family", ["gemma2", "cohere"])
def test_teacher_logit_transform_is_in_the_targets(family, tmp_path):
    """A teacher that softcaps (gemma2) or scales (cohere) its logits: the targets are its transformed
    distribution at the extraction temperature."""
    teacher = save_tiny_model(tmp_path / family, family=family)
    cfg = ExtractConfig(teacher=str(teacher), dataset=str(FIXTURES / "trl_prompt_completion.jsonl"),
                        output=str(tmp_path / "targets"), top_k=6, temperature=0.8, max_length=160, backend="torch")
    assert_targets_are_the_teachers_topk(extract(cfg, progress=False), teacher, 6, temperature=0.8)


def test_teacher_topk_runs_the_lm_head_on_the_asked_positions_only(models, monkeypatch):
    """Only the positions asked for reach ``linear_topk`` (prompt and padding tokens cost no lm_head work);
    they hold the full-sequence top-k, the others logprob -inf and id -1."""
    from fusedrl.engine import kd_extract
    from fusedrl.kernels import linear_topk

    teacher = AutoModelForCausalLM.from_pretrained(models[0])
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, teacher.config.vocab_size, (3, 13), generator=gen)
    attention = torch.ones_like(input_ids)
    attention[2, 9:] = 0
    positions = torch.rand(3, 13, generator=gen) < 0.4
    positions[1] = False
    positions[2, 9:] = False
    rows_seen = []
    monkeypatch.setattr(kd_extract, "linear_topk", lambda hidden, *a, **kw: (
        rows_seen.append(hidden.shape[0]), linear_topk(hidden, *a, **kw))[1])
    logprobs, ids = kd_extract.teacher_topk(teacher, input_ids, attention, positions, 5, 0.7, backend="torch")
    assert rows_seen == [int(positions.sum())] and 0 < rows_seen[0] < 3 * 13
    with torch.no_grad():
        logits = teacher(input_ids, attention_mask=attention).logits.float()
    want = torch.log_softmax(logits / 0.7, -1).topk(5, dim=-1)
    assert torch.equal(ids[positions], want.indices[positions])
    torch.testing.assert_close(logprobs[positions], want.values[positions], atol=1e-5, rtol=1e-4)
    assert (ids[~positions] == -1).all() and (logprobs[~positions] == float("-inf")).all()


def test_interrupted_extraction_resumes(extracted):
    cfg, out = extracted
    shards = sorted(out.glob("*.parquet"))
    kept = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in shards}
    shards[1].unlink()
    extract(cfg, progress=False)
    assert {p.name for p in out.glob("*.parquet")} == set(kept)
    for name in (shards[0].name, shards[2].name):
        assert (out / name).stat().st_mtime_ns == kept[name][0]
    assert (out / shards[1].name).read_bytes() == kept[shards[1].name][1]
    with pytest.raises(ValueError, match="different"):
        extract(ExtractConfig(**{**cfg.__dict__, "top_k": 8}), progress=False)


def held_out_kl(teacher_dir, student_dir, heldout_rows) -> float:
    """Mean KL(teacher || student) over the completion tokens of held-out rows (full logits; test only)."""
    models = [AutoModelForCausalLM.from_pretrained(d) for d in (teacher_dir, student_dir)]
    total, count = 0.0, 0
    with torch.no_grad():
        for row in heldout_rows:
            ids = torch.tensor([row["input_ids"]])
            t, s = (torch.log_softmax(m(ids).logits[0, :-1].float(), -1) for m in models)
            mask = torch.tensor(row["completion_mask"][1:], dtype=torch.bool)
            total += (t.exp() * (t - s)).sum(-1)[mask].sum().item()
            count += int(mask.sum())
    return total / count


def heldout_sft_rows(tokenizer_dir, tmp_path):
    """The demo's held-out pairs as tokenised SFT rows (prompt and chosen reply)."""
    held = tmp_path / "heldout.jsonl"
    held.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["chosen"]}) + "\n"
                            for r in map(json.loads, DEMO_HELDOUT.read_text().splitlines())))
    return prepare_dataset([{"path": str(held)}], load_tokenizer(str(tokenizer_dir)), "sft", DataConfig(max_length=160))


def test_student_kl_to_teacher_falls(models, extracted, tmp_path):
    teacher, student = models
    heldout_rows = heldout_sft_rows(teacher, tmp_path)
    before = held_out_kl(teacher, student, heldout_rows)
    config = config_from_dict({
        "base_model": str(student), "rl": "kd", "datasets": [{"path": str(extracted[1])}], "output_dir": str(tmp_path / "run"),
        "max_length": 160, "micro_batch_size": 8, "max_steps": 30, "learning_rate": 5e-3, "lr_scheduler": "constant",
        "kernel_backend": "torch", "tensorboard": False, "plot": False, "progress_bar": False,
    })
    train(config)
    after = held_out_kl(teacher, tmp_path / "run" / "final", heldout_rows)
    assert after < 0.7 * before, (before, after)


def kd_config(student, data, out, **extra) -> dict:
    return {"base_model": str(student), "rl": "kd", "datasets": [{"path": str(data)}], "output_dir": str(out),
            "max_length": 160, "micro_batch_size": 8, "max_steps": 3, "learning_rate": 5e-3, "lr_scheduler": "constant",
            "kernel_backend": "torch", "tensorboard": False, "plot": False, "progress_bar": False, **extra}


@pytest.mark.parametrize("extra", [{}, {"kd_generation_temperature": 1.0, "kd_temperature": 2.0, "kd_ce_alpha": 0.5}],
                         ids=["defaults", "temperature-and-ce"])
def test_live_teacher_trains_as_its_extracted_targets(models, extracted, tmp_path, extra):
    """``kd_teacher`` on the plain SFT rows: the same losses and final weights as training on what
    ``kd-extract`` stored from that teacher (top-16 at temperature 1). The teacher ran on batches of another
    padding there, so its logprobs differ in the last bits, which AdamW makes ~3e-6 on a few weights."""
    teacher, student = models
    stored = train(config_from_dict(kd_config(student, extracted[1], tmp_path / "stored", **extra)))
    live = train(config_from_dict(kd_config(student, SFT_DATA, tmp_path / "live", kd_teacher=str(teacher),
                                            kd_top_k=16, **extra)))
    torch.testing.assert_close(torch.tensor(live.train_losses), torch.tensor(stored.train_losses), rtol=1e-5,
                               atol=1e-6)
    want = AutoModelForCausalLM.from_pretrained(tmp_path / "stored" / "final").state_dict()
    got = AutoModelForCausalLM.from_pretrained(tmp_path / "live" / "final").state_dict()
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_live_teacher_over_the_full_vocabulary_closes_the_kl(models, tmp_path):
    """``kd_teacher`` with ``kd_top_k`` null distils every vocabulary id (linear_distill_divergence): the
    student's held-out KL to the teacher falls as with stored targets."""
    teacher, student = models
    heldout_rows = heldout_sft_rows(teacher, tmp_path)
    before = held_out_kl(teacher, student, heldout_rows)
    train(config_from_dict(kd_config(student, SFT_DATA, tmp_path / "run", kd_teacher=str(teacher), max_steps=30)))
    after = held_out_kl(teacher, tmp_path / "run" / "final", heldout_rows)
    assert after < 0.7 * before, (before, after)


@pytest.mark.parametrize("backend", ["torch", "eager"])
def test_full_vocabulary_kd_loss_is_the_full_logit_divergence(models, tmp_path, backend):
    """The full-vocabulary KD loss of a batch: ``kd_alpha T^2 jsd + kd_ce_alpha CE`` from both models' own
    full logits at T = 2 (jsd with beta 0.3: m = 0.3 teacher + 0.7 student)."""
    from fusedrl.engine.algorithms import build_algorithm
    from fusedrl.engine.batches import fixed_batches
    from fusedrl.engine.distributed import pick_device
    from fusedrl.engine.training_data import load_training_data

    teacher, student = models
    config = config_from_dict(kd_config(student, SFT_DATA, tmp_path / "run", kd_teacher=str(teacher),
                                        kd_temperature=2.0, kd_divergence="jsd", kd_beta=0.3, kd_ce_alpha=0.5,
                                        kd_alpha=0.8, kernel_backend=backend))
    algorithm = build_algorithm(config, pick_device())
    data = load_training_data(config, algorithm.tokenizer, algorithm.data_kind)
    batch = algorithm.to_device(fixed_batches(data.train, 4, data.collate)[0])
    loss, metrics = algorithm.loss(batch)
    with torch.no_grad():
        logits = [AutoModelForCausalLM.from_pretrained(d)(batch["input_ids"], attention_mask=batch["attention_mask"])
                  .logits.float() for d in (teacher, student)]
    mask = batch["labels"] != -100
    log_t, log_s = (torch.log_softmax(x / 2.0, -1)[mask] for x in logits)
    log_m = torch.log(0.3 * log_t.exp() + 0.7 * log_s.exp())
    jsd = (0.3 * (log_t.exp() * (log_t - log_m)).sum(-1) + 0.7 * (log_s.exp() * (log_s - log_m)).sum(-1)).mean()
    ce = torch.nn.functional.cross_entropy(logits[1][mask], batch["labels"][mask])
    assert metrics["kd_loss"] == pytest.approx(float(jsd), rel=1e-4, abs=1e-6)
    assert metrics["ce_loss"] == pytest.approx(float(ce), rel=1e-4, abs=1e-6)
    assert loss.item() == pytest.approx(float(0.8 * 4.0 * jsd + 0.5 * ce), rel=1e-4, abs=1e-6)


def test_live_teacher_needs_the_students_vocabulary(models, tmp_path):
    from fusedrl.engine.config import ConfigError
    from tokenizer_fixture import tiny_tokenizer

    other = tmp_path / "other-teacher"
    save_tiny_model(other)
    tiny_tokenizer(add_bos=True).save_pretrained(other)
    with pytest.raises(ValueError, match=r"^kd_teacher: .*other-teacher's tokenizer .* differs from the student's"):
        train(config_from_dict(kd_config(models[1], SFT_DATA, tmp_path / "run", kd_teacher=str(other), kd_top_k=4)))
    with pytest.raises(ConfigError, match=r"kd_generation_temperature: with kd_teacher and kd_top_k null the "
                                          r"teacher's full distribution is read at kd_temperature"):
        config_from_dict(kd_config(models[1], SFT_DATA, tmp_path / "run", kd_teacher=str(models[0]),
                                   kd_generation_temperature=2.0))


def test_student_with_another_tokenizer_is_refused(models, extracted, tmp_path):
    from tokenizer_fixture import tiny_tokenizer

    other = tmp_path / "other-student"
    save_tiny_model(other)
    tiny_tokenizer(add_bos=True).save_pretrained(other)
    config = config_from_dict({"base_model": str(other), "rl": "kd", "datasets": [{"path": str(extracted[1])}],
                               "output_dir": str(tmp_path / "run"), "max_length": 160, "max_steps": 1,
                               "kernel_backend": "torch", "tensorboard": False, "progress_bar": False})
    with pytest.raises(ValueError, match="KD needs the same vocabulary"):
        train(config)


def test_cli_kd_extract(models, tmp_path, capsys):
    out = tmp_path / "cli-targets"
    code = cli_main(["kd-extract", "--teacher", str(models[0]), "--dataset", str(SFT_DATA), "--top-k", "4",
                     "--output", str(out), "--max-length", "160", "--shard-size", "100", "--backend", "torch"])
    assert code == 0 and read_metadata(out)["top_k"] == 4
    assert len(list(out.glob("*.parquet"))) == 2


def test_cli_kd_extract_lists_the_dtypes(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["kd-extract", "--teacher", "t", "--dataset", "d", "--output", str(tmp_path), "--dtype", "fp16"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "argument --dtype: invalid choice: 'fp16'" in err and "'bfloat16'" in err


def test_kd_extract_on_two_ranks_writes_the_same_shards(models, extracted, tmp_path):
    """Under torchrun each rank writes every other shard (rank 0: 0 and 2, rank 1: 1); together they are the
    single-process extraction."""
    import os
    import socket
    import subprocess
    import sys

    import datasets

    cfg, single = extracted
    out = tmp_path / "two-ranks"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={port}", "-m", "fusedrl", "kd-extract", "--teacher", cfg.teacher, "--dataset", cfg.dataset,
         "--output", str(out), "--top-k", "16", "--max-length", "160", "--batch-size", "16", "--shard-size", "64",
         "--backend", "torch"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("teacher top-k targets written to") == 1
    assert read_metadata(out) == read_metadata(single)
    names = sorted(p.name for p in single.glob("*.parquet"))
    assert sorted(p.name for p in out.glob("*.parquet")) == names
    for name in names:
        want = datasets.Dataset.from_parquet(str(single / name)).to_dict()
        got = datasets.Dataset.from_parquet(str(out / name)).to_dict()
        assert got == want, name
