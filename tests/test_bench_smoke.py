"""End-to-end smoke test of the benchmark suite on CPU (cpu-smoke preset): outputs, rows, correctness statuses;
the fusedrl variants, interrupts, and the kernel profile tool on tiny shapes.

No timing assertions: timings on a shared CI machine mean nothing.
"""
import csv
import json
import os

import pytest
import torch

from bench import cli, main
from bench.ops import OPS
from bench.presets import PRESETS
from bench.profile import main as profile_main
from bench.report import CSV_NAME, JSON_NAME, MD_NAME
from bench.runner import RunConfig, run_case, run_roofline
from bench.spec import Case, ImplSpec, OpSpec
from fusedrl.kernels.triton.backward_launch import BACKWARD_ENV


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert main(["--preset", "cpu-smoke", "--device", "cpu", "--out", str(out)]) == 0
    return out, json.loads((out / JSON_NAME).read_text())


def test_writes_every_output(smoke):
    out, _ = smoke
    for name in (CSV_NAME, JSON_NAME, MD_NAME):
        assert (out / name).stat().st_size > 0
    assert sorted(out.glob("*.png")), "no plot written"
    with (out / CSV_NAME).open() as f:
        assert len(list(csv.DictReader(f))) == len(json.loads((out / JSON_NAME).read_text())["rows"])
    assert "| impl |" in (out / MD_NAME).read_text()


def test_environment_header(smoke):
    _, result = smoke
    env = result["environment"]
    for key in ("device", "torch", "triton", "liger-kernel", "cut-cross-entropy", "python", "timestamp"):
        assert env[key], key
    assert env["preset"] == "cpu-smoke"


def test_rows_for_every_op_and_case(smoke):
    _, result = smoke
    rows = result["rows"]
    cases = PRESETS["cpu-smoke"].cases
    for op in OPS:
        fusedrl = [r for r in rows if r["op"] == op.name and r["impl"] == "fusedrl"]
        assert len(fusedrl) == len(cases), op.name
        if fusedrl[0]["status"].startswith("unavailable"):  # an op not shipped yet (teacher top-k) is reported
            continue
        assert all(r["status"] == "reference" and r["fwd_ms"] > 0 and r["peak_mib"] > 0 for r in fusedrl), op.name
        roofline = [r for r in rows if r["op"] == op.name and r["impl"] == "torch.matmul"]
        assert [r["status"] for r in roofline] == ["roofline"] * len(cases), op.name


def test_eager_matches_fusedrl(smoke):
    _, result = smoke
    eager = [r for r in result["rows"] if r["impl"] == "eager"]
    assert eager
    for row in eager:
        assert row["status"] == "ok", row
        assert row["tol_ratio"] <= 1.0


def test_competitors_reported_not_dropped(smoke):
    _, result = smoke
    rows = [r for r in result["rows"] if r["fwd_ms"] is None and r["impl"] != "fusedrl"]
    by_impl = {impl: [r for r in rows if r["impl"] == impl] for impl in ("liger", "cce", "torch.compile")}
    for impl, impl_rows in by_impl.items():
        assert impl_rows, f"{impl} missing from the output"
        assert all(r["status"].startswith(("unavailable: ", "skipped: ")) for r in impl_rows), impl


def test_fusedrl_variants_reported(smoke):
    _, result = smoke
    rows = result["rows"]
    for name in ("fusedrl-split", "fusedrl-atomic"):  # Triton backward strategies: CUDA only
        variant = [r for r in rows if r["impl"] == name]
        assert variant and all(r["status"].startswith("unavailable: ") for r in variant), name
    ran = {r["op"] for r in rows if r["impl"] == "fusedrl" and r["status"] == "reference"}
    torch_rows = [r for r in rows if r["impl"] == "fusedrl-torch" and r["op"] in ran]
    assert torch_rows and all(r["status"] == "ok" and r["fwd_ms"] > 0 for r in torch_rows)


def test_list_and_select_variants(tmp_path, capsys):
    assert main(["--list"]) == 0
    assert "fusedrl-atomic" in capsys.readouterr().out
    assert main(["--preset", "cpu-smoke", "--device", "cpu", "--ops", "ce", "--impls", "fusedrl-torch", "--no-plots",
                 "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / JSON_NAME).read_text())["rows"]
    assert {r["impl"] for r in rows} == {"fusedrl", "fusedrl-torch", "torch.matmul"}


def test_prompt_fraction_sets_the_masked_share_of_every_row(tmp_path, monkeypatch):
    """``--prompt-fraction 0`` labels every token (the run's environment records it); out of range is a usage
    error; the cases' default masks a quarter of each row."""
    made = []
    original = cli.run_suite

    def spy(plan, cfg):
        made.extend(case.prompt_fraction for _, case in plan)
        return original(plan, cfg)

    monkeypatch.setattr(cli, "run_suite", spy)
    assert main(["--device", "cpu", "--ops", "ce", "--n", "64", "--h", "16", "--v", "96", "--dtype", "fp32",
                 "--seq", "32", "--prompt-fraction", "0", "--no-plots", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / JSON_NAME).read_text())
    assert made == [0.0] and result["environment"]["prompt_fraction"] == [0.0]
    assert [r["status"] for r in result["rows"] if r["impl"] == "fusedrl"] == ["reference"]
    with pytest.raises(SystemExit):
        main(["--device", "cpu", "--prompt-fraction", "1", "--out", str(tmp_path)])
    labels = OPS[0].make_inputs(Case(64, 16, 96, "fp32", seq=32), torch.device("cpu"))["labels"].view(2, 32)
    assert (labels[:, :8] == -100).all() and (labels[:, 8:] != -100).all()


def test_backward_strategy_in_force_during_backward(monkeypatch):
    monkeypatch.delenv(BACKWARD_ENV, raising=False)
    seen = []

    def impl(x):
        hidden = x["hidden"] * 1.0
        hidden.register_hook(lambda grad: seen.append(os.environ.get(BACKWARD_ENV)))
        return (hidden @ x["weight"].T).logsumexp(-1).mean()

    def make_inputs(case, device):
        return {"hidden": torch.randn(case.n, case.h, requires_grad=True),
                "weight": torch.randn(case.v, case.h, requires_grad=True)}

    op = OpSpec("fake", "fake", make_inputs, (
        ImplSpec("fusedrl", lambda options: impl),
        ImplSpec("fusedrl-atomic", lambda options: impl, env=((BACKWARD_ENV, "atomic"),)),
    ))
    cfg = RunConfig(device=torch.device("cpu"), warmup=0, repeats=1, log=lambda line: None)
    case = Case(8, 4, 16, "fp32", seq=8)
    rows = run_case(op, case, run_roofline(case, cfg), cfg)
    assert [r.status for r in rows[:2]] == ["reference", "ok"]
    assert None in seen and "atomic" in seen
    assert BACKWARD_ENV not in os.environ


def test_interrupt_keeps_measured_rows(tmp_path, monkeypatch):
    real = cli.run_suite

    def interrupted(plan, cfg):
        cases = real(plan, cfg)
        yield next(cases)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_suite", interrupted)
    assert main(["--preset", "cpu-smoke", "--device", "cpu", "--ops", "ce", "--impls", "eager", "--no-plots",
                 "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / JSON_NAME).read_text())
    assert result["environment"]["cases"] == f"1 of {len(PRESETS['cpu-smoke'].cases)}"
    assert {r["impl"] for r in result["rows"]} == {"fusedrl", "eager", "torch.matmul"}


def test_profile_tool_on_cpu(tmp_path):
    argv = ["--ops", "ce,topk", "--n", "64", "--h", "32", "--v", "512", "--dtype", "fp32", "--seq", "32",
            "--device", "cpu", "--impls", "fusedrl,fusedrl-atomic,fusedrl-torch,liger", "--steps", "2",
            "--warmup", "0", "--repeats", "1", "--trace", "--top", "3", "--threads", "1", "--out", str(tmp_path)]
    assert profile_main(argv) == 0
    results = json.loads((tmp_path / "profile.json").read_text())["results"]
    by_key = {(r["op"], r["impl"]): r for r in results}
    fusedrl = by_key[("ce", "fusedrl")]
    assert fusedrl["status"] == "ok" and fusedrl["fwdbwd_ms"] > 0
    assert {"fwd", "bwd"} <= {k["phase"] for k in fusedrl["kernels"]}
    assert by_key[("ce", "fusedrl-atomic")]["status"].startswith("unavailable: ")
    assert by_key[("topk", "fusedrl-atomic")]["status"].startswith("unavailable: ")
    assert by_key[("ce", "liger")]["status"].startswith("unavailable: ")
    with (tmp_path / "profile.csv").open() as f:
        assert any(row["impl"] == "fusedrl-torch" for row in csv.DictReader(f))
    markdown = (tmp_path / "profile.md").read_text()
    assert "## ce / fusedrl" in markdown and " more |" in markdown  # --top 3 of more kernels
    assert (tmp_path / "trace-ce-fusedrl.json.gz").stat().st_size > 0


def test_train_step_rows_on_cpu(tmp_path):
    """The training-step benchmark on the tiny Llama: fusedrl's step computes the model's own loss, the
    CUDA-only rows say why they did not run, and the three outputs are written."""
    from bench import train_step

    assert train_step.main(["--device", "cpu", "--impls", "hf-fused,fusedrl,fusedrl-torch,liger", "--steps", "2",
                            "--seq", "33", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / train_step.JSON_NAME).read_text())
    rows = {r["impl"]: r for r in result["rows"]}
    assert list(rows) == ["hf", "hf-fused", "fusedrl", "fusedrl-torch", "liger"]
    for name in ("hf", "hf-fused", "fusedrl", "fusedrl-torch"):
        row = rows[name]
        assert row["status"] == "ok" and row["step_ms"] > 0 and row["peak_mib"] > 0 and row["state_mib"] > 0, name
        assert row["loss_vs_hf"] < 1e-5 and row["tokens"] == 2 * 33, name
    assert rows["liger"]["status"] == "unavailable: needs a CUDA device"
    assert result["environment"]["memory_method"] and result["environment"]["steps"] == 2
    assert "| fusedrl | ok |" in (tmp_path / train_step.MD_NAME).read_text()
    with (tmp_path / train_step.CSV_NAME).open() as f:
        assert len(list(csv.DictReader(f))) == 5
