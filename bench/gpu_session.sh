#!/usr/bin/env bash
# The GPU session, one device `run` per call:  bash bench/gpu_session.sh STAGE [STAGE...]   (bench/README.md)
#
#   tests          the pytest suite on CUDA (log, junit.xml)
#   bench-targets  python -m bench --preset gpu-targets, torch.compile off (every other implementation), then
#                  fusedrl's ce and logprobs with every token labelled (--prompt-fraction 0: against the roofline)
#   bench-compile  the torch.compile rows of gpu-targets (compile time is not timed but takes minutes)
#   profile        python -m bench.profile at the target shape (ce, logprobs, grpo, dpo, kd), one Chrome trace each
#   sweep-n        every op at N 1k..32k, H=4096, V=128256 bf16 (torch.compile off, 1 warm-up + 5 calls)
#   sweep-shape    every op at N=8192 bf16 over V 32000/128256/256000, then over H 1024..8192 (likewise)
#   train-step     python -m bench.train_step: a Llama-1B training step with each loss (eager, then compiled
#                  layers), then Llama-8B's
#   bench          python -m bench $BENCH_ARGS (anything else)
#   smoke          a CPU dry run of the same paths on tiny shapes (bench smoke tests, cpu-smoke, a tiny profile)
#
# Each stage writes $OUT/<stage>.tgz (one file: logs, results, env.json, pip-freeze.txt) and a summary that is
# printed again at the end. The stages of one call share a deadline of BUDGET_S seconds (default 540): a command
# still running then gets SIGINT and writes what it measured (bench, bench.profile, pytest); later ones are skipped.
# Environment: OUT (default: a new temp folder), PYTHON (python3), WHEELS (.whl; empty: install nothing),
# SITE (/tmp/site), PYTEST_ARGS (--maxfail=20), BENCH_ARGS, BUDGET_S.
# shellcheck disable=SC2317  # the stage functions are called by name
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
cd "$(dirname "$0")/.." || exit 1

START=$SECONDS
BUDGET_S=${BUDGET_S:-540}
PACK_S=25  # kept back from the deadline for packing
PY=${PYTHON:-python3}
WHEELS=${WHEELS-.whl}
SITE=${SITE:-/tmp/site}
TARGET=(--n 16384 --h 4096 --v 128256 --dtype bf16)
# shellcheck disable=SC2054  # the commas are inside arguments
SWEEP=(--ops ce,logprobs,grpo,dpo,kd,kd-full,topk --compile off --warmup 1 --repeats 5)
ROW='^(ce|logprobs|dpo|grpo|kd|kd-full|topk) '  # the suite's progress lines

left() { echo $((BUDGET_S - (SECONDS - START) - PACK_S)); }

console() { grep --line-buffered -vE '^(USDT|STAGE):' || true; }  # the profiler's kineto chatter stays in the logs

# run LOG CMD...: CMD under the deadline (SIGINT, KILL 20 s later), its output into LOG and onto the console.
run() {
    local log=$1 t
    shift
    t=$(left)
    if [ "$t" -le 30 ]; then
        echo "skipped, deadline: $*" | tee -a "$log"
        return 124
    fi
    echo "+ $*" >>"$log"
    timeout -s INT -k 20 "$t" "$@" 2>&1 | tee -a "$log" | console
}

install_wheels() {
    if [ -z "$WHEELS" ] || ! compgen -G "$WHEELS/*.whl" >/dev/null; then
        echo "wheels: none in '$WHEELS'"
    elif "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --disable-pip-version-check --target "$SITE" "$WHEELS"/*.whl; then
        echo "wheels: installed $(cd "$WHEELS" && echo *.whl) into $SITE"
    else
        echo "wheels: install FAILED (competitors and datasets may be missing)"
    fi
    export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
}

# header DIR: device and versions on one line (also DIR/header.txt, env.json, device-slug), nvidia-smi, pip freeze.
header() {
    "$PY" - "$1" <<'EOF' 2>&1 | console
import json, sys
from pathlib import Path
import torch
from bench.env import device_slug, environment
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
env = environment(device, {})
out = Path(sys.argv[1])
(out / "env.json").write_text(json.dumps(env, indent=1) + "\n")
(out / "device-slug").write_text(device_slug(device) + "\n")
keys = ("device", "driver", "cuda_runtime", "torch", "triton", "liger-kernel", "cut-cross-entropy", "python",
        "git_commit")
line = " | ".join(f"{k} {env.get(k)}" for k in keys)
(out / "header.txt").write_text(line + "\n")
print(line)
EOF
    nvidia-smi >"$1/nvidia-smi.txt" 2>&1
    "$PY" -m pip list --format=freeze >"$1/pip-freeze.txt" 2>&1
}

# rows LOG [N]: the last N measured rows among the suite's progress lines.
rows() { grep -E "$ROW" "$1" | grep -vE ': (unavailable|skipped)' | tail -n "${2:-60}"; }

# digest LOG: one line per implementation from the digest that bench.profile prints last.
digest() { sed -n '/^== profile digest/,$p' "$1" | grep -v '^ '; }

# tally LOG: pytest's failures and its closing line.
tally() {
    grep -E '^(FAILED|ERROR) ' "$1" | head -n 30
    grep -E '(passed|failed|error|no tests ran)' "$1" | tail -n 1
}

stage_tests() {
    # shellcheck disable=SC2086  # PYTEST_ARGS is a list of words
    run "$R/pytest.log" env -u TRITON_INTERPRET "$PY" -m pytest -q -ra -p no:cacheprovider --durations=25 \
        --junitxml="$R/junit.xml" ${PYTEST_ARGS:---maxfail=20}
    local rc=$?
    tally "$R/pytest.log" >"$R/summary.txt"
    return "$rc"
}

stage_bench_targets() {
    run "$R/bench.log" "$PY" -m bench --preset gpu-targets --compile off --out "$R/targets"
    local rc=$?
    # every token labelled: fusedrl's efficiency against the roofline (the masked prompt's nominal flops aside)
    run "$R/bench.log" "$PY" -m bench --preset gpu-targets --compile off --prompt-fraction 0 --impls fusedrl \
        --ops ce,logprobs --out "$R/targets-unmasked" || rc=$?
    rows "$R/bench.log" >"$R/summary.txt"
    return "$rc"
}

stage_bench_compile() {
    run "$R/bench.log" "$PY" -m bench --preset gpu-targets --compile on --impls torch.compile --out "$R/targets-compile"
    local rc=$?
    rows "$R/bench.log" >"$R/summary.txt"
    return "$rc"
}

stage_profile() {
    run "$R/profile.log" "$PY" -m bench.profile --ops ce,logprobs,grpo,dpo,kd "${TARGET[@]}" --warmup 2 --repeats 5 \
        --trace --print-top 2 --out "$R/profile"
    local rc=$?
    digest "$R/profile.log" >"$R/summary.txt"
    return "$rc"
}

stage_sweep_n() {
    run "$R/bench.log" "$PY" -m bench --n 1024,2048,4096,8192,16384,32768 "${SWEEP[@]}" --out "$R/sweep-n"
    local rc=$?
    rows "$R/bench.log" 40 >"$R/summary.txt"
    return "$rc"
}

stage_sweep_shape() {
    run "$R/bench.log" "$PY" -m bench --n 8192 --v 32000,128256,256000 "${SWEEP[@]}" --out "$R/sweep-v"
    local rc=$?
    run "$R/bench.log" "$PY" -m bench --n 8192 --h 1024,2048,4096,8192 "${SWEEP[@]}" --out "$R/sweep-h"
    rows "$R/bench.log" 40 >"$R/summary.txt"
    return "$rc"
}

stage_train_step() {
    run "$R/train_step.log" "$PY" -m bench.train_step --out "$R/llama-1b"
    local rc=$?
    run "$R/train_step.log" "$PY" -m bench.train_step --compile-layers --impls fusedrl,liger,cce \
        --out "$R/llama-1b-compiled" || rc=$?
    run "$R/train_step.log" "$PY" -m bench.train_step --model llama-8b --impls fusedrl,liger,cce --warmup 2 \
        --steps 5 --out "$R/llama-8b" || rc=$?
    cat "$R"/llama-*/train_step.md >"$R/summary.txt" 2>/dev/null
    return "$rc"
}

stage_bench() {
    # shellcheck disable=SC2086  # BENCH_ARGS is a list of words
    run "$R/bench.log" "$PY" -m bench ${BENCH_ARGS:-} --out "$R/bench"
    local rc=$?
    rows "$R/bench.log" 40 >"$R/summary.txt"
    return "$rc"
}

stage_smoke() {
    run "$R/pytest.log" env TRITON_INTERPRET=1 "$PY" -m pytest -q -p no:cacheprovider tests/test_bench_smoke.py
    local rc=$?
    run "$R/bench.log" "$PY" -m bench --preset cpu-smoke --device cpu --out "$R/cpu-smoke" || rc=$?
    run "$R/profile.log" "$PY" -m bench.profile --ops ce,dpo --n 128 --h 32 --v 512 --dtype fp32 --seq 32 \
        --device cpu --threads 1 --steps 2 --trace --print-top 2 --out "$R/profile" || rc=$?
    { tally "$R/pytest.log"; rows "$R/bench.log" 8; digest "$R/profile.log"; } >"$R/summary.txt"
    return "$rc"
}

# pack STAGE: $WORK/STAGE -> $OUT/STAGE.tgz, without traces and plots if it would pass 15 MiB.
pack() {
    tar czf "$OUT/$1.tgz" -C "$WORK" "$1"
    if [ "$(stat -c %s "$OUT/$1.tgz")" -gt $((15 * 1024 * 1024)) ]; then
        tar czf "$OUT/$1.tgz" -C "$WORK" --exclude='*.json.gz' --exclude='*.png' "$1"
        echo "(over 15 MiB: packed without traces and plots)" >>"$WORK/$1/summary.txt"
    fi
}

usage="usage: bash bench/gpu_session.sh STAGE [STAGE...]
stages: tests bench-targets bench-compile profile sweep-n sweep-shape train-step bench smoke"
if [ $# -lt 1 ] || [ $# -gt 7 ]; then  # one tarball per stage; $OUT returns 8 files at most
    echo "$usage" >&2
    exit 2
fi
for stage in "$@"; do
    declare -F "stage_${stage//-/_}" >/dev/null || { echo "unknown stage '$stage'; $usage" >&2; exit 2; }
done

OUT=${OUT:-$(mktemp -d)}
WORK=$(mktemp -d)  # the stage folders, packed into $OUT
install_wheels
status=0
for stage in "$@"; do
    R="$WORK/$stage"
    mkdir -p "$R"
    t0=$SECONDS
    echo "=== $stage ($(left) s left before the deadline)"
    header "$R"
    "stage_${stage//-/_}"
    rc=$?
    [ "$rc" -eq 0 ] || status=$rc
    printf 'stage=%s\nrc=%s\nseconds=%s\ndate=%s\n' "$stage" "$rc" $((SECONDS - t0)) "$(date -u +%F)" >"$R/stage.txt"
    pack "$stage"
    { echo "--- $stage: rc=$rc, $((SECONDS - t0)) s, $OUT/$stage.tgz $(du -h "$OUT/$stage.tgz" | cut -f1)"
      cat "$R/summary.txt" 2>/dev/null; } >>"$WORK/summary.txt"
done

echo
echo "=================== summary ==================="
cat "$WORK/summary.txt"
cat "$WORK/$1/header.txt" 2>/dev/null || echo "(no header: python3 or torch failed to start, see the logs)"
echo "total $((SECONDS - START)) s; exit $status"
exit "$status"
