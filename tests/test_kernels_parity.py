"""Every fused backend against the eager reference: values and gradients, fp32 and bf16."""
import pytest
import torch

from conftest import FUSED_BACKENDS, assert_close, device, skip_unless_backend_runs
from fusedrl.kernels import linear_cross_entropy, linear_logprobs

DTYPES = [torch.float32, torch.bfloat16]
# The triton backend twice: its default ``split`` backward and the ``atomic`` one (FUSEDRL_TRITON_BACKWARD).
PARITY_BACKENDS = FUSED_BACKENDS + ["triton-atomic"]


def select_backend(backend, monkeypatch):
    """The ``backend=`` value to call for a parity backend; sets the triton backward strategy it names."""
    name, _, strategy = backend.partition("-")
    skip_unless_backend_runs(name)
    monkeypatch.setenv("FUSEDRL_TRITON_BACKWARD", strategy or "split")
    return name


def make_inputs(dtype, lead=(37,), hidden_size=40, vocab=101, k=None, bias=False, ignore_frac=0.2, scale=1.0):
    """Random leaf tensors on the test device; ids ``lead`` or ``lead + (k,)`` with some ignored."""
    dev = device()
    hidden = (torch.randn(*lead, hidden_size) * scale).to(dtype).to(dev).requires_grad_()
    weight = (torch.randn(vocab, hidden_size) * 0.3).to(dtype).to(dev).requires_grad_()
    b = (torch.randn(vocab) * 0.5).to(dtype).to(dev).requires_grad_() if bias else None
    shape = lead if k is None else lead + (k,)
    ids = torch.randint(0, vocab, shape, device=dev)
    ids[torch.rand(shape, device=dev) < ignore_frac] = -100
    return hidden, weight, b, ids


def fp32_leaves(*tensors):
    """fp32 copies of the inputs as fresh leaves: the fp32 eager reference for low-precision inputs."""
    return [None if t is None else t.detach().float().requires_grad_() for t in tensors]


def grads_of(out, inputs, upstream):
    loss = sum((o.float() * u).sum() for o, u in zip(out, upstream))
    return torch.autograd.grad(loss, [t for t in inputs if t is not None])


def run_logprobs(backend, hidden, weight, b, ids, upstream, **kw):
    """(logp, entropy, lse, log_sum_p_sq) and the gradients of the first three against ``upstream``."""
    out = linear_logprobs(hidden, weight, ids, bias=b, return_entropy=True, return_lse=True,
                          return_log_sum_p_sq=True, backend=backend, **kw)
    return out, grads_of(out[:3], (hidden, weight, b), upstream)


CASES = {
    "k1": dict(),
    "k1_bias_temp": dict(bias=True, temperature=0.7),
    "k4_softcap": dict(k=4, softcap=2.5),
    "k3_bias_temp_softcap": dict(k=3, bias=True, temperature=1.6, softcap=4.0),
    "batch_dims": dict(lead=(3, 13)),
}


@pytest.mark.parametrize("backend", PARITY_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_logprobs_entropy_lse_match_eager(backend, dtype, case, monkeypatch):
    backend = select_backend(backend, monkeypatch)
    spec = dict(CASES[case])
    kw = {key: spec.pop(key) for key in ("temperature", "softcap") if key in spec}
    hidden, weight, b, ids = make_inputs(dtype, **spec)
    lead = hidden.shape[:-1]
    upstream = [torch.randn(ids.shape, device=ids.device), torch.randn(lead, device=ids.device),
                torch.randn(lead, device=ids.device)]
    out, grads = run_logprobs(backend, hidden, weight, b, ids, upstream, chunk_size=8, **kw)
    ref_inputs = fp32_leaves(hidden, weight, b)
    ref_out, ref_grads = run_logprobs("eager", *ref_inputs, ids, upstream, **kw)
    for name, got, want in zip(("logp", "entropy", "lse", "log_sum_p_sq"), out, ref_out):
        assert got.dtype == torch.float32
        assert_close(got, want, dtype, name)
    assert torch.all(out[0][ids == -100] == 0)
    assert not out[3].requires_grad
    for name, got, want in zip(("d_hidden", "d_weight", "d_bias"), grads, ref_grads):
        assert got.dtype == dtype
        assert_close(got, want, dtype, name)


CE_OPTIONS = {
    "plain": dict(),
    "smoothing": dict(label_smoothing=0.1),
    "z_loss": dict(z_loss=1e-3),
    "softcap_bias": dict(softcap=3.0, bias=True),
    "all": dict(label_smoothing=0.2, z_loss=1e-2, softcap=5.0, bias=True),
}


# The reduction only scales each token's gradient before the backward kernels: the atomic backward, which
# shares that per-token gradient with the split one, runs with ``none`` (random upstream gradients) alone.
CE_BACKEND_REDUCTIONS = [(backend, reduction) for backend in PARITY_BACKENDS for reduction in ("mean", "sum", "none")
                         if backend != "triton-atomic" or reduction == "none"]


@pytest.mark.parametrize("backend, reduction", CE_BACKEND_REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("option", list(CE_OPTIONS))
def test_cross_entropy_matches_eager(backend, dtype, reduction, option, monkeypatch):
    backend = select_backend(backend, monkeypatch)
    opts = dict(CE_OPTIONS[option])
    bias = opts.pop("bias", False)
    hidden, weight, b, labels = make_inputs(dtype, lead=(5, 9), bias=bias)
    upstream = torch.randn(labels.shape, device=labels.device) if reduction == "none" else torch.tensor(1.0)

    def run(be, h, w, bb):
        loss, mean_logit = linear_cross_entropy(h, w, labels, bias=bb, reduction=reduction, backend=be,
                                                return_mean_logit=True, chunk_size=16, **opts)
        grads = torch.autograd.grad((loss * upstream.to(loss.device)).sum(), [t for t in (h, w, bb) if t is not None])
        return loss, mean_logit, grads

    loss, mean_logit, grads = run(backend, hidden, weight, b)
    ref_loss, ref_mean_logit, ref_grads = run("eager", *fp32_leaves(hidden, weight, b))
    assert_close(loss, ref_loss, dtype, "loss")
    assert_close(mean_logit, ref_mean_logit, dtype, "mean_logit")
    for name, got, want in zip(("d_hidden", "d_weight", "d_bias"), grads, ref_grads):
        assert_close(got, want, dtype, name)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_eager_cross_entropy_matches_torch_functional(reduction):
    """The reference itself agrees with torch's cross_entropy (smoothing included) on full logits."""
    hidden, weight, b, labels = make_inputs(torch.float32, lead=(29,), bias=True)
    loss = linear_cross_entropy(hidden, weight, labels, bias=b, label_smoothing=0.1, reduction=reduction,
                                backend="eager")
    logits = hidden @ weight.T + b
    want = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1, reduction=reduction)
    if reduction == "none":
        want = torch.where(labels == -100, 0.0, want)
    torch.testing.assert_close(loss, want, atol=1e-5, rtol=1e-4)


def test_eager_logprobs_match_log_softmax():
    hidden, weight, b, ids = make_inputs(torch.float32, k=5, bias=True)
    got = linear_logprobs(hidden, weight, ids, bias=b, temperature=0.5, backend="eager")
    logsm = torch.log_softmax((hidden @ weight.T + b) / 0.5, -1)
    want = torch.where(ids == -100, 0.0, logsm.gather(-1, ids.clamp(min=0)))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", FUSED_BACKENDS + ["eager"])
def test_cross_entropy_token_accuracy(backend):
    skip_unless_backend_runs(backend)
    hidden, weight, b, labels = make_inputs(torch.float32, lead=(41,), bias=True)
    logits = hidden @ weight.T + b
    labels[::2] = torch.where(labels[::2] == -100, -100, logits[::2].argmax(-1))
    _, accuracy = linear_cross_entropy(hidden, weight, labels, bias=b, return_accuracy=True, backend=backend)
    want = ((logits.argmax(-1) == labels) & (labels != -100)).float()
    assert torch.equal(accuracy, want)
    assert accuracy.sum() >= (labels[::2] != -100).sum()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the large-shape parity run)")
@pytest.mark.parametrize("backend", PARITY_BACKENDS)
def test_large_shape_bf16_matches_fp32_eager(backend, monkeypatch):
    """N=8192, H=4096, V=128256 in bf16 against an fp32 eager reference (logits ~4 GiB: GPU only)."""
    backend = select_backend(backend, monkeypatch)
    hidden, weight, _, labels = make_inputs(torch.bfloat16, lead=(8192,), hidden_size=4096, vocab=128256,
                                            scale=1.0 / 8)
    loss = linear_cross_entropy(hidden, weight, labels, z_loss=1e-4, backend=backend)
    loss.backward()
    ref_hidden, ref_weight = fp32_leaves(hidden, weight)
    ref = linear_cross_entropy(ref_hidden, ref_weight, labels, z_loss=1e-4, backend="eager")
    ref.backward()
    assert_close(loss, ref, torch.bfloat16, "loss")
    assert_close(hidden.grad, ref_hidden.grad, torch.bfloat16, "d_hidden")
    assert_close(weight.grad, ref_weight.grad, torch.bfloat16, "d_weight")
