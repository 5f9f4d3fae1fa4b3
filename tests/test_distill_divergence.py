"""Full-vocabulary distillation divergence: every fused backend against eager, values and gradients."""
import pytest
import torch

from conftest import FUSED_BACKENDS, assert_close, device, skip_unless_backend_runs
from fusedrl.kernels import linear_distill_divergence
from test_kernels_edges import LargestTensor
from test_kernels_parity import fp32_leaves, select_backend

DTYPES = [torch.float32, torch.bfloat16]
DIVERGENCES = ["forward_kl", "reverse_kl", "jsd"]
# student hidden 40, teacher hidden 28, V = 101 (several vocab blocks, not a multiple of one)
CASES = {
    "plain": dict(),
    "bias_softcap_temperature": dict(student_bias=True, teacher_bias=True, student_softcap=3.0, teacher_softcap=2.0,
                                     temperature=1.7),
    "batch_dims": dict(lead=(3, 7), temperature=0.8),
}


def make_pair(dtype, lead=(37,), vocab=101, student_bias=False, teacher_bias=False, **_):
    """Student leaves (hidden, weight, bias) in ``dtype``, a teacher (hidden, weight, bias) and labels with
    about a fifth ignored."""
    dev = device()
    student = [(torch.randn(*lead, 40)).to(dtype).to(dev).requires_grad_(),
               (0.3 * torch.randn(vocab, 40)).to(dtype).to(dev).requires_grad_(),
               (0.5 * torch.randn(vocab)).to(dtype).to(dev).requires_grad_() if student_bias else None]
    teacher = [torch.randn(*lead, 28).to(dev), (0.4 * torch.randn(vocab, 28)).to(dev),
               (0.5 * torch.randn(vocab)).to(dev) if teacher_bias else None]
    labels = torch.randint(0, vocab, lead, device=dev)
    labels[torch.rand(lead, device=dev) < 0.2] = -100
    return student, teacher, labels


def run(backend, student, teacher, labels, upstream, divergence, **kw):
    """Per-token divergence and the student's gradients of ``sum(upstream * divergence)``."""
    out = linear_distill_divergence(student[0], student[1], teacher[0], teacher[1], labels, divergence=divergence,
                                    beta=0.3, student_bias=student[2], teacher_bias=teacher[2], reduction="none",
                                    backend=backend, **kw)
    grads = torch.autograd.grad((out * upstream).sum(), [t for t in student if t is not None])
    return out, grads


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("case", list(CASES))
def test_distill_divergence_matches_eager(backend, dtype, divergence, case, monkeypatch):
    backend = select_backend(backend, monkeypatch)
    spec = dict(CASES[case])
    kw = {key: spec[key] for key in ("student_softcap", "teacher_softcap", "temperature") if key in spec}
    student, teacher, labels = make_pair(dtype, **spec)
    upstream = torch.randn(labels.shape, device=labels.device)
    out, grads = run(backend, student, teacher, labels, upstream, divergence, chunk_size=8, **kw)
    ref_out, ref_grads = run("eager", fp32_leaves(*student), teacher, labels, upstream, divergence, **kw)
    assert out.dtype == torch.float32 and out.shape == labels.shape
    assert torch.all(out[labels == -100] == 0) and torch.all(ref_out >= -1e-6)
    assert_close(out, ref_out, dtype, "divergence")
    for name, got, want in zip(("d_hidden", "d_weight", "d_bias"), grads, ref_grads):
        assert got.dtype == dtype
        assert_close(got, want, dtype, name)


@pytest.mark.parametrize("backend", FUSED_BACKENDS + ["eager"])
def test_reductions_and_a_student_equal_to_its_teacher(backend):
    """mean over kept tokens, sum, none; a student that is its teacher has divergence 0 and no gradient."""
    skip_unless_backend_runs(backend)
    student, teacher, labels = make_pair(torch.float32)
    per_token = linear_distill_divergence(student[0], student[1], teacher[0], teacher[1], labels, reduction="none",
                                          backend=backend)
    total = linear_distill_divergence(student[0], student[1], teacher[0], teacher[1], labels, reduction="sum",
                                      backend=backend)
    mean = linear_distill_divergence(student[0], student[1], teacher[0], teacher[1], labels, backend=backend)
    torch.testing.assert_close(total, per_token.sum())
    torch.testing.assert_close(mean, per_token.sum() / (labels != -100).sum())
    same = [t.detach().clone().requires_grad_() for t in teacher[:2]]
    for divergence in DIVERGENCES:
        out = linear_distill_divergence(same[0], same[1], teacher[0], teacher[1], labels, divergence=divergence,
                                        backend=backend)
        (grad,) = torch.autograd.grad(out, same[0])
        assert abs(out.item()) < 1e-6 and grad.abs().max() < 1e-6


@pytest.mark.parametrize("backend", FUSED_BACKENDS + ["eager"])
def test_no_kept_tokens(backend):
    skip_unless_backend_runs(backend)
    student, teacher, labels = make_pair(torch.float32)
    labels[:] = -100
    out = linear_distill_divergence(student[0], student[1], teacher[0], teacher[1], labels, divergence="jsd",
                                    backend=backend)
    out.backward()
    assert out.item() == 0.0 and torch.all(student[0].grad == 0) and torch.all(student[1].grad == 0)


def test_teacher_gets_no_gradient_and_torch_backend_stays_chunked():
    student, teacher, labels = make_pair(torch.float32, lead=(301,), vocab=257)
    teacher = [t.requires_grad_() if t is not None else None for t in teacher]
    with LargestTensor() as mode:
        out = linear_distill_divergence(student[0], student[1], teacher[0], teacher[1], labels, divergence="jsd",
                                        backend="torch", chunk_size=16)
        out.backward()
    assert mode.largest <= max(16 * 257, 301 * 40)  # a [chunk, V] buffer or the [N, H] student rows; N x V is 77357
    assert teacher[0].grad is None and teacher[1].grad is None and student[1].grad is not None


@pytest.mark.parametrize("kwargs, message", [
    (dict(divergence="kl"), "divergence: expected one of"),
    (dict(divergence="jsd", beta=1.0), r"beta: jsd mixes .* \(0, 1\)"),
    (dict(reduction="avg"), "reduction: expected one of"),
    (dict(temperature=0.0), "temperature: expected a finite number > 0"),
    (dict(teacher_softcap=-1.0), "teacher_softcap: expected a finite number > 0"),
])
def test_bad_arguments_name_themselves(kwargs, message):
    student, teacher, labels = make_pair(torch.float32)
    with pytest.raises(ValueError, match=message):
        linear_distill_divergence(student[0], student[1], teacher[0], teacher[1], labels, backend="torch", **kwargs)


def test_bad_shapes_name_the_tensor():
    student, teacher, labels = make_pair(torch.float32)
    with pytest.raises(ValueError, match="teacher_weight: expected the student's vocabulary of 101 rows, got 100"):
        linear_distill_divergence(student[0], student[1], teacher[0], teacher[1][:100], labels, backend="torch")
    with pytest.raises(ValueError, match=r"teacher_hidden: expected leading shape \[37\]"):
        linear_distill_divergence(student[0], student[1], teacher[0][:5], teacher[1], labels, backend="torch")
    with pytest.raises(ValueError, match=r"labels: expected shape \[37\], got \[36\]"):
        linear_distill_divergence(student[0], student[1], teacher[0], teacher[1], labels[:36], backend="torch")
