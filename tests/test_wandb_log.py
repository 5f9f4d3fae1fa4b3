"""Weights & Biases logging through a stand-in ``wandb`` module that records what the trainer sends it."""
import importlib.machinery
import importlib.util
import json
import os
import signal
import sys
import types

import pytest

from engine_fixtures import save_tiny_model, train_config
from fusedrl.engine.config import config_from_dict
from fusedrl.engine.trainer import train


class RecordingRun:
    """What ``wandb.init`` returns: records ``define_metric``, ``log`` and ``finish``."""

    def __init__(self, run_id):
        self.id, self.defined, self.logged, self.finished, self.preempting = run_id, [], [], False, False

    def define_metric(self, name, **kwargs):
        self.defined.append((name, kwargs))

    def log(self, data):
        self.logged.append(data)

    def finish(self):
        self.finished = True

    def mark_preempting(self):
        self.preempting = True


@pytest.fixture
def wandb_runs(monkeypatch):
    """A stand-in ``wandb`` module; yields ``[(init kwargs, RecordingRun), ...]`` of every run started."""
    runs = []
    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)

    def init(**kwargs):
        runs.append((kwargs, RecordingRun(kwargs["id"] or f"run{len(runs)}")))
        return runs[-1][1]

    module.init = init
    module.Table = lambda columns, data: {"columns": columns, "data": data}
    monkeypatch.setitem(sys.modules, "wandb", module)
    return runs


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def series(run, key):
    """``(train/global_step, value)`` of every log call of ``run`` that has ``key``."""
    return [(data["train/global_step"], data[key]) for data in run.logged if key in data]


def test_metrics_config_and_resume_reach_one_wandb_run(model_dir, tmp_path, wandb_runs):
    out = tmp_path / "run"
    raw = train_config(model_dir, out, "dpo", max_steps=4, save_steps=2, wandb_project="fusedrl-tests",
                       wandb_name="dpo-tiny", wandb_mode="offline")
    first = train(config_from_dict({**raw, "max_steps": 2}))
    (kwargs, run), = wandb_runs
    assert {k: kwargs[k] for k in ("project", "entity", "name", "mode", "dir", "id", "resume")} == {
        "project": "fusedrl-tests", "entity": None, "name": "dpo-tiny", "mode": "offline", "dir": str(out),
        "id": None, "resume": None}
    assert kwargs["config"]["rl"] == "dpo" and kwargs["config"]["max_steps"] == 2
    assert run.defined == [("train/global_step", {}), ("*", {"step_metric": "train/global_step", "step_sync": True})]
    assert [step for step, _ in series(run, "train/loss")] == [1, 2]
    assert [loss for _, loss in series(run, "train/loss")] == pytest.approx(first.train_losses)
    assert [step for step, _ in series(run, "eval/loss")] == [0, 2]
    assert run.finished
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["wandb_run_id"] == "run0"

    train(config_from_dict({**raw, "resume_from_checkpoint": "latest"}))
    kwargs, resumed = wandb_runs[1]
    assert (kwargs["id"], kwargs["resume"]) == ("run0", "allow")
    assert [step for step, _ in series(resumed, "train/loss")] == [3, 4]


def test_a_stopped_run_is_marked_preempting(model_dir, tmp_path, wandb_runs, monkeypatch):
    """A stop signal (here SIGUSR1 during step 1) marks the W&B run preempting before it is finished."""
    from fusedrl.engine.algorithms.sft import SFT
    from fusedrl.engine.preemption import Preempted

    loss_of = SFT.loss

    def signalled(self, batch):
        if self.model.training:
            os.kill(os.getpid(), signal.SIGUSR1)
        return loss_of(self, batch)

    monkeypatch.setattr(SFT, "loss", signalled)
    with pytest.raises(Preempted):
        train(config_from_dict(train_config(model_dir, tmp_path / "run", "sft", wandb_project="fusedrl-tests")))
    (_, run), = wandb_runs
    assert run.preempting and run.finished and [step for step, _ in series(run, "train/loss")] == [1]


def test_text_samples_go_to_a_table(model_dir, tmp_path, wandb_runs):
    raw = train_config(model_dir, tmp_path / "run", "grpo", max_steps=2, reward_funcs=["length"], num_generations=2,
                       max_completion_length=4, num_sample_generations=2, wandb_project="fusedrl-tests")
    train(config_from_dict(raw))
    (_, run), = wandb_runs
    tables = series(run, "samples")
    assert [step for step, _ in tables] and tables[-1][1]["columns"] == ["step", "name", "text"]
    written = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert tables[-1][1]["data"] == [[s["step"], s["name"], s["text"]] for s in written]


def test_missing_wandb_stops_the_run_before_a_model_loads(model_dir, tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    monkeypatch.setattr("fusedrl.engine.trainer.build_algorithm", lambda *a: pytest.fail("a model was loaded"))
    raw = train_config(model_dir, tmp_path / "run", "sft", wandb_project="fusedrl-tests")
    with pytest.raises(ValueError, match=r"^wandb_project: logging to Weights & Biases \('fusedrl-tests'\) needs the "
                                         r"wandb package \(pip install wandb\)"):
        train(config_from_dict(raw))
