"""linear_topk: every backend against the eager reference, the tie rule, bad input, and the CUDA sources."""
import os
import shutil
import subprocess
import sysconfig

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import TOLERANCES, device, skip_unless_backend_runs
from fusedrl.kernels import linear_topk
from fusedrl.kernels.cuda_ext import NVCC_FLAGS, extension_sources
from test_kernels_edges import LargestTensor

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
BACKENDS = ["torch", "triton", pytest.param("cuda", marks=(pytest.mark.gpu, requires_gpu))]
DTYPES = [torch.float32, torch.bfloat16]


def make_inputs(dtype, lead=(13,), hidden_size=36, vocab=211, bias=False):
    """Random hidden ``lead + (H,)``, weight ``[V, H]`` and optional bias ``[V]`` on the test device."""
    dev = device()
    hidden = torch.randn(*lead, hidden_size).to(dtype).to(dev)
    weight = (torch.randn(vocab, hidden_size) * 0.3).to(dtype).to(dev)
    b = (torch.randn(vocab) * 0.5).to(dtype).to(dev) if bias else None
    return hidden, weight, b


def full_logprobs(hidden, weight, bias, temperature, softcap=None):
    """fp32 ``log_softmax`` over the whole vocabulary, ``[..., V]``: what every returned pair must agree with."""
    logits = hidden.float() @ weight.float().T
    if bias is not None:
        logits = logits + bias.float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return torch.log_softmax(logits / temperature, dim=-1)


def assert_topk_matches(got, want, full_logp, dtype, exact_ids=None):
    """Check a backend's ``(logprobs, ids)`` against eager's at the tolerance of input ``dtype``.

    With ``exact_ids`` (default: fp32 inputs) ids must equal eager's. Otherwise the
    sorted logprobs agree rank by rank, every returned logprob is the reference
    logprob of its own id, ids are distinct, and an id may differ from eager's only
    where the reference logprob of the returned id is within tolerance of eager's
    value at that rank (a near tie, broken differently by rounding).
    """
    (got_lp, got_ids), (want_lp, want_ids) = got, want
    assert got_lp.dtype == torch.float32 and got_ids.dtype == torch.int64
    assert got_lp.shape == want_lp.shape and got_ids.shape == want_ids.shape
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(got_lp, want_lp, **tol)
    if exact_ids is None:
        exact_ids = dtype == torch.float32
    if exact_ids:
        assert torch.equal(got_ids, want_ids)
        return
    own = full_logp.gather(-1, got_ids)
    torch.testing.assert_close(got_lp, own, **tol)
    ordered = got_ids.sort(dim=-1).values
    assert torch.all(ordered[..., 1:] != ordered[..., :-1]), "duplicate ids in a row"
    differs = got_ids != want_ids
    near_tie = torch.isclose(own, want_lp, **tol)
    assert torch.all(near_tie | ~differs), f"{int((differs & ~near_tie).sum())} ids differ from eager beyond a near tie"


def run_both(backend, hidden, weight, b, k, temperature=1.0, softcap=None, **kw):
    """(backend result, eager result on fp32 copies, fp32 full logprobs)."""
    got = linear_topk(hidden, weight, k, bias=b, temperature=temperature, softcap=softcap, backend=backend, **kw)
    ref = [None if t is None else t.float() for t in (hidden, weight, b)]
    want = linear_topk(ref[0], ref[1], k, bias=ref[2], temperature=temperature, softcap=softcap, backend="eager")
    return got, want, full_logprobs(*ref, temperature, softcap)


def torch_chunks(backend):
    """Small chunks for the torch backend, so token and vocab chunks end off their boundaries."""
    return dict(chunk_size=5, vocab_chunk=64) if backend == "torch" else {}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k", [1, 5, 16])
def test_matches_eager_with_bias_and_temperature(backend, dtype, k):
    skip_unless_backend_runs(backend)
    hidden, weight, b = make_inputs(dtype, bias=True)
    got, want, full = run_both(backend, hidden, weight, b, k, temperature=0.7, **torch_chunks(backend))
    assert_topk_matches(got, want, full, dtype)
    assert torch.all(got[0][:, 1:] <= got[0][:, :-1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_softcap_matches_eager(backend, dtype):
    """Gemma-2's final logit softcapping before the temperature; a cap of 1.5 reorders nothing but squeezes
    the logits (up to about 4 here) enough to move every logprob."""
    skip_unless_backend_runs(backend)
    hidden, weight, b = make_inputs(dtype, bias=True)
    got, want, full = run_both(backend, hidden, weight, b, 9, temperature=0.8, softcap=1.5, **torch_chunks(backend))
    assert_topk_matches(got, want, full, dtype)
    torch.testing.assert_close(want[0], full.gather(-1, want[1]), **TOLERANCES[torch.float32])
    uncapped = full_logprobs(hidden.float(), weight.float(), b.float(), 0.8)
    assert (want[0] - uncapped.gather(-1, want[1])).abs().max() > 0.1


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_dims_and_non_contiguous_hidden(backend):
    skip_unless_backend_runs(backend)
    _, weight, _ = make_inputs(torch.float32)
    hidden = torch.randn(5, 3, 36, device=weight.device).transpose(0, 1)
    assert not hidden.is_contiguous()
    got, want, full = run_both(backend, hidden, weight, None, 7, temperature=1.6, **torch_chunks(backend))
    assert got[0].shape == got[1].shape == (3, 5, 7)
    assert_topk_matches(got, want, full, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS + ["eager"])
def test_k_equals_vocab_returns_every_id(backend):
    skip_unless_backend_runs(backend)
    hidden, weight, b = make_inputs(torch.float32, lead=(9,), vocab=23, bias=True)
    logp, ids = linear_topk(hidden, weight, 23, bias=b, backend=backend, **torch_chunks(backend))
    assert torch.equal(ids.sort(dim=-1).values, torch.arange(23, device=ids.device).expand(9, 23))
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(9, device=logp.device))
    torch.testing.assert_close(logp, full_logprobs(hidden, weight, b, 1.0).gather(-1, ids), atol=1e-5, rtol=1e-4)


def expected_tie_ranking(logits, k):
    """Ids of the ``k`` largest logits per row, equal logits by lower id, ranked in plain Python."""
    rows = []
    for row in logits.tolist():
        rows.append(sorted(range(len(row)), key=lambda v: (-row[v], v))[:k])
    return torch.tensor(rows)


@pytest.mark.parametrize("backend", BACKENDS + ["eager"])
def test_ties_rank_lower_id_first(backend):
    """Eight distinct integer rows repeated over the vocabulary: exact, massive ties in every backend."""
    skip_unless_backend_runs(backend)
    dev = device()
    hidden = torch.randint(-2, 3, (11, 16), device=dev).float()
    distinct = torch.randint(-2, 3, (8, 16), device=dev).float()
    weight = distinct[torch.randint(0, 8, (150,), device=dev)]
    bias = torch.randint(-1, 2, (150,), device=dev).float()
    k = 20
    logp, ids = linear_topk(hidden, weight, k, bias=bias, backend=backend, **torch_chunks(backend))
    logits = hidden @ weight.T + bias
    assert torch.equal(ids.cpu(), expected_tie_ranking(logits.cpu(), k))
    torch.testing.assert_close(logp, torch.log_softmax(logits, -1).gather(-1, ids), atol=1e-5, rtol=1e-4)


def test_auto_on_cpu_is_torch_and_needs_no_grad():
    hidden, weight, b = make_inputs(torch.float32, bias=True)
    hidden.requires_grad_()
    weight.requires_grad_()
    got = linear_topk(hidden, weight, 4, bias=b)
    want = linear_topk(hidden, weight, 4, bias=b, backend="torch")
    assert not got[0].requires_grad
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_auto_prefers_cuda_then_triton_then_torch(monkeypatch):
    from fusedrl.kernels import cuda_ext
    from fusedrl.kernels.topk import _resolve

    gpu = torch.device("cuda")
    monkeypatch.setattr(cuda_ext, "extension_error", lambda: None)
    assert _resolve("auto", gpu, 256) == "cuda"
    assert _resolve("auto", gpu, 257) == "torch"
    assert _resolve("auto", torch.device("cpu"), 5) == "torch"
    monkeypatch.setattr(cuda_ext, "extension_error", lambda: RuntimeError("no nvcc"))
    with pytest.warns(UserWarning, match="no nvcc"):
        assert _resolve("auto", gpu, 5) == "triton"


@pytest.mark.parametrize("backend", BACKENDS + ["eager"])
def test_zero_tokens(backend):
    skip_unless_backend_runs(backend)
    hidden, weight, _ = make_inputs(torch.float32, lead=(2, 0))
    logp, ids = linear_topk(hidden, weight, 3, backend=backend)
    assert logp.shape == ids.shape == (2, 0, 3)
    assert logp.dtype == torch.float32 and ids.dtype == torch.int64


def test_torch_backend_memory_is_bounded_by_chunks():
    n, hidden_size, vocab, k, chunk, vocab_chunk = 301, 12, 257, 5, 16, 64
    hidden, weight, _ = make_inputs(torch.float32, lead=(n,), hidden_size=hidden_size, vocab=vocab)
    with LargestTensor() as mode:
        linear_topk(hidden, weight, k, backend="torch", chunk_size=chunk, vocab_chunk=vocab_chunk)
    assert mode.largest <= max(chunk * (vocab_chunk + k), n * k, hidden.numel())  # hidden.numel(): its views
    with LargestTensor() as eager_mode:
        linear_topk(hidden, weight, k, backend="eager")
    assert eager_mode.largest >= n * vocab


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 17),
    hidden_size=st.integers(1, 20),
    vocab=st.integers(1, 90),
    k_frac=st.floats(0.0, 1.0),
    temperature=st.floats(0.3, 3.0),
    bias=st.booleans(),
    chunk=st.integers(1, 9),
    vocab_chunk=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
def test_torch_backend_property(n, hidden_size, vocab, k_frac, temperature, bias, chunk, vocab_chunk, seed):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, hidden_size, generator=gen)
    weight = torch.randn(vocab, hidden_size, generator=gen)
    b = torch.randn(vocab, generator=gen) if bias else None
    k = max(1, round(k_frac * vocab))
    got = linear_topk(hidden, weight, k, bias=b, temperature=temperature, backend="torch",
                      chunk_size=chunk, vocab_chunk=vocab_chunk)
    want = linear_topk(hidden, weight, k, bias=b, temperature=temperature, backend="eager")
    assert_topk_matches(got, want, full_logprobs(hidden, weight, b, temperature), torch.float32, exact_ids=False)


def test_match_check_rejects_a_wrong_id():
    """The near-tie allowance of ``assert_topk_matches`` does not excuse an id far from eager's."""
    hidden, weight, b = make_inputs(torch.float32, bias=True)
    want = linear_topk(hidden, weight, 5, bias=b, backend="eager")
    full = full_logprobs(hidden, weight, b, 1.0)
    worst = full.argmin(-1)
    ids = want[1].clone()
    ids[0, 2] = worst[0]
    with pytest.raises(AssertionError):
        assert_topk_matches((want[0], ids), want, full, torch.bfloat16)
    assert_topk_matches(want, want, full, torch.bfloat16)


BAD_CALLS = {
    "k_zero": (dict(k=0), "k"),
    "k_above_vocab": (dict(k=212), "k"),
    "k_float": (dict(k=2.0), "k"),
    "k_bool": (dict(k=True), "k"),
    "k_above_fused_limit": (dict(k=300, vocab=400, backend="triton"), "k"),
    "backend": (dict(backend="fast"), "backend"),
    "cuda_on_cpu": (dict(backend="cuda"), "backend"),
    "temperature": (dict(temperature=0.0), "temperature"),
    "softcap": (dict(softcap=-2.0), "softcap"),
    "weight": (dict(weight_cols=35), "weight"),
    "bias": (dict(bias_len=3), "bias"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_input_raises_value_error_naming_argument(case):
    spec, name = BAD_CALLS[case]
    spec = dict(spec)
    hidden = torch.randn(4, 36)
    weight = torch.randn(spec.pop("vocab", 211), spec.pop("weight_cols", 36))
    bias = torch.zeros(spec.pop("bias_len")) if "bias_len" in spec else None
    k = spec.pop("k", 3)
    with pytest.raises(ValueError, match=rf"^{name}:"):
        linear_topk(hidden, weight, k, bias=bias, **spec)


def _nvcc_command(source, output):
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths

    # The .cu gets the extension build's nvcc flags; the binding is compiled unoptimised (only saves time).
    flags = NVCC_FLAGS + COMMON_NVCC_FLAGS if source.endswith(".cu") else []
    includes = [f"-I{p}" for p in include_paths() + [sysconfig.get_paths()["include"]]]
    # torch >= 2.10 builds its extensions as C++20 (torch.utils.cpp_extension); match it.
    return ["nvcc", "-std=c++20", "-c", source, "-o", output, "-DTORCH_EXTENSION_NAME=_C", *flags, *includes]


def test_cuda_sources_compile_with_nvcc(tmp_path):
    """Compile every csrc source as the extension build would (nvcc's default arch), in parallel."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not on PATH: cannot compile the CUDA sources in csrc/")
    sources = extension_sources()
    assert any(s.endswith(".cu") for s in sources) and any(s.endswith(".cpp") for s in sources)
    procs = [
        subprocess.Popen(_nvcc_command(src, str(tmp_path / (os.path.basename(src) + ".o"))),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for src in sources
    ]
    for src, proc in zip(sources, procs):
        log = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, f"nvcc failed on {src}:\n{log[-4000:]}"
        own = [line for line in log.splitlines() if "csrc/" in line and "warning" in line]
        assert not own, f"warnings in {src}:\n" + "\n".join(own)


def test_cuda_kernels_use_no_approximate_tanh(tmp_path):
    """Under the extension's --use_fast_math nvcc compiles tanhf to tanh.approx.f32 (relative error ~5e-4, past
    the fp32 parity tolerance): the kernels' sm_90 PTX must not contain it (the softcap uses __expf)."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not on PATH: cannot compile the CUDA sources in csrc/")
    for src in [s for s in extension_sources() if s.endswith(".cu")]:
        ptx = tmp_path / (os.path.basename(src) + ".ptx")
        command = [*_nvcc_command(src, str(ptx)), "-ptx", "-arch=sm_90"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-4000:]
        assert "tanh.approx" not in ptx.read_text() and "ex2.approx" in ptx.read_text()


GPU_CASES = [(torch.float32, 1), (torch.float32, 64), (torch.bfloat16, 50), (torch.bfloat16, 256)]


@pytest.mark.parametrize("backend", ["cuda", "triton", "torch"])
@pytest.mark.parametrize("dtype,k", GPU_CASES, ids=str)
@pytest.mark.gpu
@requires_gpu
def test_gpu_backends_match_eager_at_scale(backend, dtype, k):
    hidden, weight, b = make_inputs(dtype, lead=(3, 171), hidden_size=264, vocab=50_257, bias=True)
    got, want, full = run_both(backend, hidden, weight, b, k, temperature=0.8)
    assert_topk_matches(got, want, full, dtype, exact_ids=False)  # 513 x 50k fp32 logits: rounding can flip near ties
