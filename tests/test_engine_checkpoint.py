"""Checkpoints: exact resume, atomic writes, Hugging Face loadability."""
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from engine_fixtures import save_tiny_model, train_config
from fusedrl.engine import checkpoint
from fusedrl.engine.config import config_from_dict
from fusedrl.engine.trainer import train


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"), tie_embeddings=False)


RESUME_CASES = {
    "full": {},
    "lora": {"adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.2},
    # bco_pair's loss depends on a running mean of every training reward so far (evaluated every step)
    "bco_pair": {"loss_type": "bco_pair", "eval_steps": 1},
    # MPO: bco_pair's running mean inside a weighted sum of loss types
    "mpo": {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0], "rpo_alpha": None},
    # KTO's unpaired bco: the same running mean, over every training row's reward
    "kto_bco": {"rl": "kto", "loss_type": "bco", "eval_steps": 1},
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_continues_the_same_loss_curve(model_dir, tmp_path, case):
    extra = dict(RESUME_CASES[case])
    raw = train_config(model_dir, tmp_path / "full", extra.pop("rl", "dpo"), max_steps=6, save_steps=3,
                       save_total_limit=None, lr_scheduler="cosine", warmup_steps=1, gradient_accumulation_steps=2,
                       **extra)
    full = train(config_from_dict(raw))
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "full")] == ["checkpoint-3", "checkpoint-6"]

    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-3", resumed_dir / "checkpoint-3")
    raw.update(output_dir=str(resumed_dir), resume_from_checkpoint="latest")
    resumed = train(config_from_dict(raw))
    assert resumed.step == 6
    torch.testing.assert_close(torch.tensor(resumed.train_losses), torch.tensor(full.train_losses[3:]),
                               atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(torch.tensor(resumed.eval_after["loss"]), torch.tensor(full.eval_after["loss"]))


def test_checkpoint_loads_with_transformers(model_dir, tmp_path):
    train(config_from_dict(train_config(model_dir, tmp_path / "run", "sft", max_steps=2, save_steps=2)))
    folder = tmp_path / "run" / "checkpoint-2"
    assert (folder / "model.safetensors").is_file() and (folder / "optimizer.safetensors").is_file()
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))
    model = AutoModelForCausalLM.from_pretrained(folder)
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    for a, b in zip(model.parameters(), final.parameters()):
        torch.testing.assert_close(a, b)


class ExplodingModel(torch.nn.Module):
    """Writes a partial file, then fails, like a process killed mid-save."""

    def save_pretrained(self, folder, safe_serialization=True):
        (Path(folder) / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt("killed mid-write")


def test_interrupted_save_keeps_previous_checkpoint(model_dir, tmp_path):
    out = tmp_path / "run"
    train(config_from_dict(train_config(model_dir, out, "sft", max_steps=2, save_steps=2)))
    before = {p.name: p.stat().st_size for p in (out / "checkpoint-2").iterdir()}
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(out, 4, ExplodingModel(), optimizer, {"step": 4})
    assert [p.name for p in checkpoint.list_checkpoints(out)] == ["checkpoint-2"]
    assert {p.name: p.stat().st_size for p in (out / "checkpoint-2").iterdir()} == before
    assert checkpoint.resolve_resume_path(out, "latest") == out / "checkpoint-2"
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        checkpoint.resolve_resume_path(out, str(out / ".tmp-checkpoint-4"))


def test_resume_from_a_missing_checkpoint_says_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint-2 not found \(checkpoints in .*: none\)"):
        checkpoint.resolve_resume_path(tmp_path, str(tmp_path / "checkpoint-2"))


def test_final_model_folder_is_replaced_atomically(tmp_path):
    """``final/`` is written beside and renamed into place: an interrupted write keeps the previous one."""
    final = tmp_path / "final"
    checkpoint.write_folder_atomically(final, lambda folder: (folder.mkdir(), (folder / "a.txt").write_text("1")))

    def interrupted(folder):
        folder.mkdir()
        (folder / "a.txt").write_text("2")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        checkpoint.write_folder_atomically(final, interrupted)
    assert (final / "a.txt").read_text() == "1"
    checkpoint.write_folder_atomically(final, lambda folder: (folder.mkdir(), (folder / "b.txt").write_text("3")))
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]


def test_a_fresh_run_refuses_an_earlier_runs_checkpoints(model_dir, tmp_path, monkeypatch, caplog):
    """Checkpoints of an earlier run in ``output_dir``: a fresh run stops before loading any model (else pruning
    would delete its own lower-numbered checkpoints and ``latest`` resume the old run); so does a resume from a
    checkpoint elsewhere. With ``overwrite_output_dir`` they are deleted and the new run's checkpoints stay."""
    out = tmp_path / "run"
    raw = train_config(model_dir, out, "sft", max_steps=4, save_steps=2)
    train(config_from_dict(raw))
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(out / "checkpoint-2", elsewhere / "checkpoint-2")
    monkeypatch.setattr("fusedrl.engine.trainer.build_algorithm", lambda *a: pytest.fail("a model was loaded"))
    for extra in ({}, {"resume_from_checkpoint": str(elsewhere / "checkpoint-2")}):
        with pytest.raises(ValueError, match=r"^output_dir: .*run holds checkpoints of an earlier run \(checkpoint-2, "
                                             r"checkpoint-4\); continue that run with resume_from_checkpoint: latest"):
            train(config_from_dict({**raw, "max_steps": 2, "save_steps": 1, **extra}))
    monkeypatch.undo()
    with caplog.at_level("WARNING"):
        train(config_from_dict({**raw, "max_steps": 3, "save_steps": 1, "overwrite_output_dir": True}))
    assert "deleting the earlier run's checkpoints" in caplog.text
    assert [p.name for p in checkpoint.list_checkpoints(out)] == ["checkpoint-2", "checkpoint-3"]
    assert '"step": 3' in (out / "checkpoint-3" / "trainer_state.json").read_text()


def test_a_nan_gradient_stops_the_run_before_the_optimizer_step(model_dir, tmp_path, monkeypatch):
    """The second training step's loss is NaN: the run stops naming the step and the last checkpoint, the
    weights never take the step, and the run resumes from that checkpoint."""
    from fusedrl.engine.algorithms.sft import SFT

    loss_of = SFT.loss
    calls = []

    def nan_at_step_two(self, batch):
        loss, metrics = loss_of(self, batch)
        calls.append(self.model.training)
        return (loss * float("nan"), metrics) if calls.count(True) == 2 and self.model.training else (loss, metrics)

    monkeypatch.setattr(SFT, "loss", nan_at_step_two)
    out = tmp_path / "run"
    raw = train_config(model_dir, out, "sft", max_steps=3, save_steps=1)
    with pytest.raises(FloatingPointError, match=r"^step 2: the gradient norm is nan .*no weight took it\. The last "
                                                 r"checkpoint is .*checkpoint-1"):
        train(config_from_dict(raw))
    assert not (out / "final").exists()
    monkeypatch.undo()
    assert train(config_from_dict({**raw, "resume_from_checkpoint": "latest"})).step == 3


def test_a_stop_signal_checkpoints_the_step_and_the_run_resumes_exactly(model_dir, tmp_path, monkeypatch, capsys):
    """SIGUSR1 (a scheduler's notice) during step 2: the step finishes, checkpoint-2 is written although
    save_steps is unset, the CLI exits with 128 + SIGUSR1, the signal handlers are restored, and resuming
    gives the uninterrupted run's losses."""
    from fusedrl.engine.algorithms.sft import SFT
    from fusedrl.engine.cli import main as cli_main

    raw = train_config(model_dir, tmp_path / "whole", "sft", max_steps=4)
    whole = train(config_from_dict(raw))
    loss_of, calls = SFT.loss, []

    def signalled_in_step_two(self, batch):
        calls.append(self.model.training)
        if calls.count(True) == 2 and self.model.training:
            os.kill(os.getpid(), signal.SIGUSR1)
        return loss_of(self, batch)

    monkeypatch.setattr(SFT, "loss", signalled_in_step_two)
    out = tmp_path / "stopped"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**raw, "output_dir": str(out)}))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    assert cli_main(["train", str(tmp_path / "config.yaml")]) == 128 + signal.SIGUSR1
    assert "stopped by SIGUSR1 after step 2; " in capsys.readouterr().err
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert [p.name for p in checkpoint.list_checkpoints(out)] == ["checkpoint-2"] and not (out / "final").exists()
    monkeypatch.undo()
    resumed = train(config_from_dict({**raw, "output_dir": str(out), "resume_from_checkpoint": "latest"}))
    torch.testing.assert_close(torch.tensor(resumed.train_losses), torch.tensor(whole.train_losses[2:]),
                               atol=1e-6, rtol=1e-6)


def test_a_checkpoint_resumes_only_with_its_fsdp_setting(model_dir, tmp_path, caplog):
    """``fsdp`` in a single process trains unsharded (and says so); a checkpoint records the setting it was
    written with, and resuming it with the other one is refused before any state is touched."""
    out = tmp_path / "run"
    with caplog.at_level("INFO"):
        train(config_from_dict(train_config(model_dir, out, "sft", max_steps=1, save_steps=1, fsdp=True)))
    assert "fsdp: a single process has nothing to shard" in caplog.text
    state = (out / "checkpoint-1" / "trainer_state.json")
    assert '"fsdp": false' in state.read_text()
    state.write_text(state.read_text().replace('"fsdp": false', '"fsdp": true'))
    with pytest.raises(ValueError, match="written with fsdp: True; resume it with the same setting"):
        train(config_from_dict(train_config(model_dir, out, "sft", max_steps=2, resume_from_checkpoint="latest")))


def test_resuming_into_a_longer_run_says_the_schedule_changes(model_dir, tmp_path, caplog, capsys):
    """A resumed run with another ``max_steps`` lays the learning-rate schedule over the new total: the log
    says so. The progress bars (training, and each evaluation pass) go to stderr."""
    raw = train_config(model_dir, tmp_path / "run", "sft", max_steps=2, save_steps=2)
    train(config_from_dict(raw))
    with caplog.at_level("WARNING"):
        train(config_from_dict({**raw, "max_steps": 4, "resume_from_checkpoint": "latest"}), progress=True)
    assert "this run has 4 optimizer steps, the checkpoint's run had 2" in caplog.text
    bars = capsys.readouterr().err
    assert "train: 100%" in bars and "eval: " in bars


def test_export_writes_a_lora_checkpoint_as_the_final_model(model_dir, tmp_path):
    """A LoRA checkpoint holds the adapter only; `fusedrl export` writes it as final/ is written (adapter and
    merged model), and at the last step that is final/ itself."""
    from safetensors.torch import load_file

    from fusedrl.engine.cli import main as cli_main

    raw = train_config(model_dir, tmp_path / "run", "sft", max_steps=2, save_steps=2, adapter="lora", lora_r=4)
    train(config_from_dict(raw))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert cli_main(["export", str(config), str(tmp_path / "run" / "checkpoint-2"), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    final = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    exported = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert exported.keys() == final.keys()
    for name, value in final.items():
        torch.testing.assert_close(exported[name], value)
    assert cli_main(["export", str(config), str(tmp_path / "run" / "checkpoint-9"), str(tmp_path / "x")]) == 2
