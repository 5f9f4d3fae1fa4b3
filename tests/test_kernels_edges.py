"""Edge cases, bad input, memory bounds and property tests of the vocab kernels."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import FUSED_BACKENDS, assert_close, device, skip_unless_backend_runs
from fusedrl.kernels import chunked, linear_cross_entropy, linear_logprobs
from fusedrl.kernels.dispatch import resolve_backend
from test_kernels_parity import PARITY_BACKENDS, fp32_leaves, grads_of, make_inputs, select_backend

ALL_BACKENDS = FUSED_BACKENDS + ["eager"]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_zero_tokens(backend):
    skip_unless_backend_runs(backend)
    hidden, weight, _, ids = make_inputs(torch.float32, lead=(0,))
    logp, ent = linear_logprobs(hidden, weight, ids, return_entropy=True, backend=backend)
    assert logp.shape == (0,) and ent.shape == (0,)
    loss = linear_cross_entropy(hidden, weight, ids, backend=backend)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.all(weight.grad == 0) and hidden.grad.shape == hidden.shape


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_all_ignored_rows(backend):
    skip_unless_backend_runs(backend)
    hidden, weight, _, ids = make_inputs(torch.float32, lead=(11,), ignore_frac=1.1)
    logp = linear_logprobs(hidden, weight, ids, backend=backend)
    assert torch.all(logp == 0)
    loss = linear_cross_entropy(hidden, weight, ids, backend=backend)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.all(hidden.grad == 0) and torch.all(weight.grad == 0)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_logits_of_magnitude_1e4(backend):
    """Integer inputs make the logits exact, so every backend sees the same z up to 1e4 in size."""
    skip_unless_backend_runs(backend)
    dev = device()
    hidden = torch.randint(-3, 4, (19, 24), device=dev).float() * 500.0
    weight = torch.randint(-2, 3, (77, 24), device=dev).float()
    ids = torch.randint(0, 77, (19, 2), device=dev)
    out = [linear_logprobs(*fp32_leaves(hidden, weight), ids, return_entropy=True, return_lse=True,
                           return_log_sum_p_sq=True, backend=be)
           for be in (backend, "eager")]
    assert (hidden @ weight.T).abs().max() >= 1e4
    for got, want in zip(*out):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-5)
    h, w = fp32_leaves(hidden, weight)
    linear_cross_entropy(h, w, ids[:, 0], backend=backend).backward()
    assert torch.isfinite(h.grad).all() and torch.isfinite(w.grad).all()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_log_sum_p_sq_of_uniform_and_peaked_rows(backend):
    """``log sum p**2`` is ``-log V`` for equal logits and 0 for a certain token (V = 101: several vocab blocks)."""
    skip_unless_backend_runs(backend)
    dev = device()
    weight = torch.zeros(101, 8, device=dev)
    weight[57, 0] = 1.0
    hidden = torch.zeros(3, 8, device=dev)
    hidden[1, 0], hidden[2, 0] = 200.0, 1.0
    ids = torch.tensor([0, 57, 57], device=dev)
    _, log_sum_p_sq = linear_logprobs(hidden, weight, ids, return_log_sum_p_sq=True, backend=backend)
    p57 = torch.e / (torch.e + 100)
    want = torch.tensor([-torch.log(torch.tensor(101.0)), 0.0,
                         torch.log(torch.tensor(p57**2 + 100 * ((1 - p57) / 100) ** 2))])
    torch.testing.assert_close(log_sum_p_sq.cpu(), want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_fp16_inputs(backend):
    skip_unless_backend_runs(backend)
    hidden, weight, b, ids = make_inputs(torch.float16, bias=True)
    logp = linear_logprobs(hidden, weight, ids, bias=b, backend=backend)
    logp.sum().backward()
    ref = fp32_leaves(hidden, weight, b)
    want = linear_logprobs(ref[0], ref[1], ids, bias=ref[2], backend="eager")
    want.sum().backward()
    assert_close(logp, want, torch.float16, "logp")
    for got, w in zip((hidden.grad, weight.grad, b.grad), ref):
        assert got.dtype == torch.float16
        assert_close(got, w.grad, torch.float16, "grad")


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_non_contiguous_inputs(backend):
    skip_unless_backend_runs(backend)
    dev = device()
    base_h = torch.randn(40, 34, device=dev, requires_grad=True)
    base_w = torch.randn(40, 83, device=dev, requires_grad=True)
    hidden, weight = base_h.T[::2], base_w.T
    ids = torch.randint(0, 83, (17, 3), device=dev).T.contiguous().T
    assert not (hidden.is_contiguous() or weight.is_contiguous() or ids.is_contiguous())
    got = linear_logprobs(hidden, weight, ids, backend=backend)
    got.sum().backward()
    grads = base_h.grad.clone(), base_w.grad.clone()
    base_h.grad = base_w.grad = None
    want = linear_logprobs(hidden.contiguous(), weight.contiguous(), ids.contiguous(), backend="eager")
    want.sum().backward()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads[0], base_h.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads[1], base_w.grad, atol=1e-5, rtol=1e-4)


def _backend_module(backend):
    """The module implementing a fused backend's ``forward_stats`` and ``backward_stats``."""
    if backend == "triton":
        from fusedrl.kernels.triton import launch
        return launch
    return chunked


def _spy_backward(monkeypatch, backend):
    """Record the (need_hidden, need_weight, need_bias) flags the backend's backward receives."""
    module = _backend_module(backend)
    calls = []
    original = module.backward_stats

    def spy(problem, lse, grad, need_h, need_w, need_b, chunk_size=None):
        calls.append((need_h, need_w, need_b))
        return original(problem, lse, grad, need_h, need_w, need_b, chunk_size)

    monkeypatch.setattr(module, "backward_stats", spy)
    return calls


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_frozen_weight_skips_weight_gradient(backend, monkeypatch):
    skip_unless_backend_runs(backend)
    calls = _spy_backward(monkeypatch, backend)
    hidden, weight, _, ids = make_inputs(torch.float32)
    weight.requires_grad_(False)
    linear_cross_entropy(hidden, weight, ids, backend=backend).backward()
    assert calls == [(True, False, False)]
    assert weight.grad is None and hidden.grad is not None
    ref_h = hidden.detach().clone().requires_grad_()
    linear_cross_entropy(ref_h, weight, ids, backend="eager").backward()
    torch.testing.assert_close(hidden.grad, ref_h.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_frozen_hidden_skips_hidden_gradient(backend, monkeypatch):
    skip_unless_backend_runs(backend)
    calls = _spy_backward(monkeypatch, backend)
    hidden, weight, _, ids = make_inputs(torch.float32)
    linear_cross_entropy(hidden.detach(), weight, ids, backend=backend).backward()
    assert calls == [(False, True, False)]


@pytest.mark.parametrize("backend", PARITY_BACKENDS)
def test_tokens_with_every_id_ignored_are_never_computed(backend, monkeypatch):
    """Prompt and padding tokens cost no lm_head work: the backend computes only the tokens with an id kept (one
    of K ids is enough), reading their hidden rows in place; every statistic and hidden-gradient row of a skipped
    token is 0, as the eager reference gives, and the kept tokens' values and gradients match it."""
    name = select_backend(backend, monkeypatch)
    module = _backend_module(name)
    computed = []
    original = module.forward_stats

    def spy(problem, chunk_size=None):
        computed.append(problem.num_tokens)
        return original(problem, chunk_size)

    monkeypatch.setattr(module, "forward_stats", spy)
    hidden, weight, bias, ids = make_inputs(torch.float32, lead=(5, 7), k=2, bias=True, ignore_frac=0.0)
    ids[:, :3] = -100
    ids[:, 3, 0] = -100
    ids[4, 6, :] = -100
    skipped = (ids == -100).all(-1)
    upstream = [torch.randn(ids.shape, device=ids.device)] + [torch.randn(5, 7, device=ids.device) for _ in range(3)]
    results = []
    for be in (name, "eager"):
        out = linear_logprobs(hidden, weight, ids, bias=bias, softcap=3.0, return_entropy=True, return_lse=True,
                              return_log_sum_p_sq=True, backend=be)
        results.append((out, grads_of(out, (hidden, weight, bias), upstream)))
    assert computed == [35 - 16]
    (got, got_grads), (want, want_grads) = results
    for got_stat, want_stat in zip(got[1:], want[1:]):
        assert torch.all(got_stat[skipped] == 0) and torch.all(want_stat[skipped] == 0)
    assert torch.all(got_grads[0][skipped] == 0)
    for got_t, want_t in zip((*got, *got_grads), (*want, *want_grads)):
        torch.testing.assert_close(got_t, want_t, atol=1e-5, rtol=1e-4)


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_torch_backend_never_exceeds_chunk_times_vocab():
    n, hidden_size, vocab, chunk = 301, 12, 257, 16
    hidden, weight, _, labels = make_inputs(torch.float32, lead=(n,), hidden_size=hidden_size, vocab=vocab)
    with LargestTensor() as mode:
        loss, _ = linear_cross_entropy(hidden, weight, labels, label_smoothing=0.1, z_loss=1e-3, softcap=4.0,
                                       return_mean_logit=True, backend="torch", chunk_size=chunk)
        loss.backward()
    assert mode.largest <= chunk * vocab
    with LargestTensor() as eager_mode:
        linear_cross_entropy(hidden, weight, labels, backend="eager")
    assert eager_mode.largest >= n * vocab


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 23),
    hidden_size=st.integers(1, 20),
    vocab=st.integers(1, 70),
    k=st.integers(1, 4),
    temperature=st.floats(0.3, 3.0),
    softcap=st.one_of(st.none(), st.floats(0.5, 30.0)),
    bias=st.booleans(),
    chunk=st.integers(1, 9),
)
def test_torch_backend_property(n, hidden_size, vocab, k, temperature, softcap, bias, chunk):
    hidden = torch.randn(n, hidden_size, requires_grad=True)
    weight = torch.randn(vocab, hidden_size, requires_grad=True)
    b = torch.randn(vocab, requires_grad=True) if bias else None
    ids = torch.randint(0, vocab, (n, k))
    ids[torch.rand(n, k) < 0.25] = -100
    upstream = torch.randn(n, k), torch.randn(n)
    results = []
    for be in ("torch", "eager"):
        logp, ent = linear_logprobs(hidden, weight, ids, bias=b, temperature=temperature, softcap=softcap,
                                    return_entropy=True, backend=be, chunk_size=chunk)
        loss = (logp * upstream[0]).sum() + (ent * upstream[1]).sum()
        inputs = [t for t in (hidden, weight, b) if t is not None]
        results.append((logp, ent, *torch.autograd.grad(loss, inputs)))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


BAD_CALLS = {
    "weight": (lambda h, w, i: linear_logprobs(h, w[:, :-1], i), "weight"),
    "weight_rank": (lambda h, w, i: linear_logprobs(h, w[0], i), "weight"),
    "ids_shape": (lambda h, w, i: linear_logprobs(h, w, i[:-1]), "ids"),
    "ids_range": (lambda h, w, i: linear_logprobs(h, w, torch.full_like(i, w.shape[0])), "ids"),
    "ids_negative": (lambda h, w, i: linear_logprobs(h, w, torch.full_like(i, -1)), "ids"),
    "ids_float": (lambda h, w, i: linear_logprobs(h, w, i.float()), "ids"),
    "k_zero": (lambda h, w, i: linear_logprobs(h, w, i[:, None][:, :0]), "K"),
    "temperature": (lambda h, w, i: linear_logprobs(h, w, i, temperature=0.0), "temperature"),
    "softcap": (lambda h, w, i: linear_logprobs(h, w, i, softcap=-1.0), "softcap"),
    "backend": (lambda h, w, i: linear_logprobs(h, w, i, backend="cuda"), "backend"),
    "bias": (lambda h, w, i: linear_logprobs(h, w, i, bias=torch.zeros(3)), "bias"),
    "reduction": (lambda h, w, i: linear_cross_entropy(h, w, i, reduction="avg"), "reduction"),
    "smoothing": (lambda h, w, i: linear_cross_entropy(h, w, i, label_smoothing=1.5), "label_smoothing"),
    "labels_shape": (lambda h, w, i: linear_cross_entropy(h, w, i[:, None]), "labels"),
    "labels_range": (lambda h, w, i: linear_cross_entropy(h, w, i + 1000), "labels"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_input_raises_value_error_naming_argument(case):
    call, name = BAD_CALLS[case]
    hidden, weight, _, ids = make_inputs(torch.float32, lead=(7,), ignore_frac=0.0)
    with pytest.raises(ValueError, match=name):
        call(hidden, weight, ids)


def test_auto_backend_resolution():
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("eager", torch.device("cpu")) == "eager"
    if torch.cuda.is_available():
        assert resolve_backend("auto", torch.device("cuda")) == "triton"


def test_mixed_dtypes_promote():
    hidden = torch.randn(9, 16, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(33, 16, requires_grad=True)
    ids = torch.randint(0, 33, (9,))
    linear_logprobs(hidden, weight, ids, backend="torch").sum().backward()
    assert hidden.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.float32
