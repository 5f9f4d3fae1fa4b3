"""One training step of a causal LM with each loss implementation, side by side (``python -m bench.train_step``).

The model (a randomly initialised Llama of a named shape), the batch and AdamW are the same for every row;
only the loss differs. ``hf`` is the model's own ``forward(labels=...)`` (full logits, the loss in fp32);
``hf-fused`` the same call after ``fusedrl.hf.use_fused_loss(model)`` (how a training loop fusedrl does not
own gets the kernel); every other row runs the decoder, then the linear cross-entropy implementation of that
name from the ``ce`` op (fusedrl and its fixed backends, eager, Liger-Kernel, Cut Cross-Entropy) on the final
hidden states and the lm_head weight, shifted as Hugging Face shifts them. Each row: the time of a whole step
(forward, backward, AdamW; median and p20/p80 after warm-up), tokens per second, peak memory above what the
model, its gradients and the optimizer state hold between steps, and the first step's loss relative to
``hf``'s (the same weights and batch, so it checks the implementation too).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import gc
import json
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from fusedrl.engine.models import compile_layers, enable_activation_checkpointing
from fusedrl.hf import use_fused_loss

from . import memory
from .competitors import import_error
from .env import device_slug, environment
from .ops import cross_entropy
from .rows import MIB
from .spec import BuildOptions, ImplSpec
from .synthetic import PROMPT_FRACTION, generator
from .timing import measure

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {  # LlamaConfig fields; llama-1b and llama-8b are Llama-3.2-1B's and Llama-3.1-8B's shapes
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "llama-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1001, tie_word_embeddings=True),
}
DEFAULTS = {  # device type -> (model, batch rows, tokens per row, warm-up steps, timed steps)
    "cuda": ("llama-1b", 8, 2048, 3, 10),
    "cpu": ("tiny", 2, 65, 1, 3),
}
HF, HF_FUSED = "hf", "hf-fused"
CE_IMPLS = {spec.name: spec for spec in cross_entropy.OP.impls if spec.name != "torch.compile"}
IMPL_NAMES = (HF, HF_FUSED, *CE_IMPLS)
CSV_NAME, JSON_NAME, MD_NAME = "train_step.csv", "train_step.json", "train_step.md"


@dataclass
class StepRow:
    """One implementation's training step; times in ms, memory in MiB, ``loss_vs_hf`` a relative difference."""

    impl: str
    status: str
    model: str
    params_m: float
    tokens: int
    dtype: str
    checkpointing: bool
    compiled_layers: bool
    step_ms: float | None = None
    step_p20_ms: float | None = None
    step_p80_ms: float | None = None
    tokens_per_s: float | None = None
    peak_mib: float | None = None
    state_mib: float | None = None
    loss: float | None = None
    loss_vs_hf: float | None = None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.train_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), help="model shape (default llama-1b on CUDA, tiny on CPU)")
    p.add_argument("--batch", type=int, help="rows per step (default 8 on CUDA, 2 on CPU)")
    p.add_argument("--seq", type=int, help="tokens per row (default 2048 on CUDA, 65 on CPU)")
    p.add_argument("--dtype", choices=("bf16", "fp32"), help="weights and activations (default bf16 on CUDA, "
                                                              "fp32 on CPU)")
    p.add_argument("--impls", help=f"comma list (default all): {','.join(IMPL_NAMES)}")
    p.add_argument("--no-checkpointing", action="store_true",
                   help="keep every layer's activations (default: activation checkpointing, so the loss's "
                        "memory is what differs)")
    p.add_argument("--compile-layers", action="store_true",
                   help="torch.compile each decoder layer, as the trainer's torch_compile does (the warm-up "
                        "steps absorb the compiles)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 3 on CUDA, 1 on CPU)")
    p.add_argument("--steps", type=int, help="timed steps (default 10 on CUDA, 3 on CPU)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--out", type=Path, help="output folder (default bench/results/<device>-<date>)")
    return p


def make_batch(rows: int, seq: int, vocab: int, device: torch.device) -> dict[str, torch.Tensor]:
    """``input_ids [rows, seq]`` and ``labels`` (the ids, -100 over each row's first quarter: the prompt)."""
    ids = torch.randint(0, vocab, (rows, seq), generator=generator(device), device=device)
    labels = ids.clone()
    labels[:, : int(seq * PROMPT_FRACTION)] = -100
    return {"input_ids": ids, "labels": labels}


def build_model(name: str, dtype: torch.dtype, device: torch.device, checkpointing: bool, compiled: bool, seq: int):
    """The randomly initialised Llama of shape ``name`` (seed 0, so every row starts from the same weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**MODELS[name], max_position_embeddings=max(seq, 2048), use_cache=False,
                         attn_implementation="sdpa")
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in ``dtype`` directly: an 8B model never exists in fp32
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(saved)
    if checkpointing:
        enable_activation_checkpointing(model)
    if compiled:
        compile_layers([model])
    return model.train()


def loss_function(name: str, model, device: torch.device):
    """``batch -> scalar loss`` of implementation ``name`` on ``model`` (``hf-fused`` patches it), or a string
    saying why it cannot run."""
    if name in (HF, HF_FUSED):
        model = use_fused_loss(model) if name == HF_FUSED else model
        return lambda batch: model(**batch).loss
    spec: ImplSpec = CE_IMPLS[name]
    if spec.cuda_only and device.type != "cuda":
        return "unavailable: needs a CUDA device"
    if spec.library and (reason := import_error(spec.library)):
        return f"unavailable: {reason}"
    head_loss = spec.build(BuildOptions(device=device))

    def loss(batch):
        hidden = model.model(input_ids=batch["input_ids"]).last_hidden_state
        return head_loss({"hidden": hidden[:, :-1].flatten(0, 1), "weight": model.lm_head.weight,
                          "labels": batch["labels"][:, 1:].flatten()})
    return loss


def _state_bytes(model, optimizer, device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    tensors = list(model.parameters()) + [t for s in optimizer.state.values() for t in s.values()
                                          if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


def run_impl(name: str, args: argparse.Namespace, device: torch.device) -> StepRow:
    """``name``'s row, with its environment (the fusedrl backward strategy) in force throughout."""
    with CE_IMPLS[name].scoped_env() if name in CE_IMPLS else contextlib.nullcontext():
        return _run_steps(name, args, device)


def _run_steps(name: str, args: argparse.Namespace, device: torch.device) -> StepRow:
    """Build the model, take ``warmup`` steps (the first one's loss is reported), then time ``steps``."""
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    model = build_model(args.model, dtype, device, not args.no_checkpointing, args.compile_layers, args.seq)
    row = StepRow(name, "ok", args.model, sum(p.numel() for p in model.parameters()) / 1e6,
                  args.batch * args.seq, args.dtype, not args.no_checkpointing, args.compile_layers)
    loss_fn = loss_function(name, model, device)
    if isinstance(loss_fn, str):
        row.status = loss_fn
        return row
    batch = make_batch(args.batch, args.seq, model.config.vocab_size, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda" or None)

    def step(_=None) -> torch.Tensor:
        loss = loss_fn(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    try:
        row.loss = float(step())
        for _ in range(max(0, args.warmup - 1)):
            step()
        row.state_mib = _state_bytes(model, optimizer, device) / MIB
        row.peak_mib = memory.peak_bytes(step, device) / MIB
        timing = measure(step, lambda: None, device=device, warmup=0, repeats=args.steps)
    except torch.OutOfMemoryError:
        row.status = "out of memory"
        return row
    row.step_ms, row.step_p20_ms, row.step_p80_ms = timing.median_ms, timing.p20_ms, timing.p80_ms
    row.tokens_per_s = row.tokens / (timing.median_ms / 1e3)
    return row


def markdown(rows: list[StepRow], env: dict) -> str:
    """The rows as a Markdown table under a one-line header of the setup."""
    head = (f"Training step of {rows[0].model} ({rows[0].params_m:,.1f}M parameters), {rows[0].tokens} tokens, "
            f"{rows[0].dtype}, activation checkpointing {'on' if rows[0].checkpointing else 'off'}, compiled layers "
            f"{'on' if rows[0].compiled_layers else 'off'}, on "
            f"{env['device']} (torch {env['torch']}, triton {env['triton']}).")
    lines = [head, "", "| impl | status | step ms (p20-p80) | tokens/s | peak MiB above state | loss vs hf |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        spread = f"{r.step_ms:.1f} ({r.step_p20_ms:.1f}-{r.step_p80_ms:.1f})" if r.step_ms is not None else ""
        rate = f"{r.tokens_per_s:,.0f}" if r.tokens_per_s is not None else ""
        peak = f"{r.peak_mib:,.0f}" if r.peak_mib is not None else ""
        diff = f"{r.loss_vs_hf:.1e}" if r.loss_vs_hf is not None else ""
        lines.append(f"| {r.impl} | {r.status} | {spread} | {rate} | {peak} | {diff} |")
    return "\n".join(lines) + "\n"


def write_outputs(rows: list[StepRow], env: dict, out: Path) -> list[Path]:
    """``train_step.csv``, ``train_step.json`` (environment and rows) and ``train_step.md`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / CSV_NAME).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[field.name for field in fields(StepRow)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    (out / JSON_NAME).write_text(json.dumps({"environment": env, "rows": [asdict(r) for r in rows]}, indent=1))
    (out / MD_NAME).write_text(markdown(rows, env))
    return [out / name for name in (CSV_NAME, JSON_NAME, MD_NAME)]


def main(argv: list[str] | None = None) -> int:
    """Run every implementation asked for, one after the other, and write the results; 0 on success."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    model, batch, seq, warmup, steps = DEFAULTS[device.type]
    args.model, args.batch, args.seq = args.model or model, args.batch or batch, args.seq or seq
    args.warmup = warmup if args.warmup is None else args.warmup
    args.steps, args.dtype = args.steps or steps, args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    names = [n for n in (args.impls or ",".join(IMPL_NAMES)).split(",") if n]
    if unknown := [n for n in names if n not in IMPL_NAMES]:
        parser.error(f"--impls: unknown {unknown}; known: {', '.join(IMPL_NAMES)}")
    if args.batch < 1 or args.seq < 2 or args.warmup < 1 or args.steps < 1:
        parser.error("--batch, --warmup and --steps must be >= 1 and --seq >= 2")
    rows = []
    for name in dict.fromkeys([HF, *names]):  # hf first: the loss every row is checked against
        rows.append(run_impl(name, args, device))
        print(f"train_step {name}: {rows[-1].status}" + (f", {rows[-1].step_ms:.1f} ms, {rows[-1].peak_mib:,.0f} MiB"
                                                         if rows[-1].step_ms is not None else ""), flush=True)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    reference = rows[0].loss
    for r in rows:
        if r.loss is not None and reference is not None:
            r.loss_vs_hf = abs(r.loss - reference) / abs(reference)
    env = environment(device, {"command": " ".join(["python -m bench.train_step", *(sys.argv[1:] if argv is None
                                                                                      else argv)]),
                               "warmup": args.warmup, "steps": args.steps,
                               "memory_method": memory.METHODS[device.type]})
    out = args.out or RESULTS / f"{device_slug(device)}-{datetime.date.today().isoformat()}"
    for path in write_outputs(rows, env, out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
