import pytest
import torch

from kd_pipeline.errors import StoreError
from kd_pipeline.losses import dense_kl, kd_loss, sparse_kl
from kd_pipeline.targets import topk_targets

TEMPS = (1.0, 2.0, 4.0)


def _logits(b=64, c=10, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g) * scale, torch.randn(b, c, generator=g) * scale


@pytest.mark.parametrize("tau", TEMPS)
@pytest.mark.parametrize("c", [10, 1000])
def test_full_k_equals_dense_seed_formula(tau, c):
    teacher, student = _logits(c=c)
    t = topk_targets(teacher, c, TEMPS)
    assert torch.allclose(sparse_kl(student, t, tau), dense_kl(student, teacher, tau), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tau", TEMPS)
@pytest.mark.parametrize("k", [1, 2, 3, 5, 9])
def test_topk_never_exceeds_dense(tau, k):
    for seed in range(5):
        teacher, student = _logits(seed=seed, scale=1.0 + seed)
        sparse = sparse_kl(student, topk_targets(teacher, k, TEMPS), tau)
        dense = dense_kl(student, teacher, tau)
        assert (sparse <= dense * (1 + 1e-5) + 1e-6).all()  # float32 rounding only
        assert (sparse >= -1e-6).all()


def test_topk_kl_is_zero_when_student_equals_teacher():
    teacher, _ = _logits()
    assert sparse_kl(teacher, topk_targets(teacher, 3, TEMPS), 4.0).abs().max() < 1e-5


def test_undeclared_temperature_refused():
    teacher, student = _logits()
    with pytest.raises(StoreError, match=r"distill.temperature: 3.0 is not one of the store's temperatures"):
        sparse_kl(student, topk_targets(teacher, 3, TEMPS), 3.0)


def test_kd_loss_seed_formula_and_gradients():
    teacher, student = _logits()
    student.requires_grad_(True)
    labels = torch.randint(0, 10, (64,))
    labels[::2] = -1  # unlabelled rows: KD term only
    t = topk_targets(teacher, 10, TEMPS)
    loss, parts = kd_loss(student, labels, t, 4.0, 0.3)
    ce = torch.nn.functional.cross_entropy(student[labels >= 0], labels[labels >= 0])
    expect = 0.3 * ce + 0.7 * 16.0 * dense_kl(student, teacher, 4.0).mean()
    assert torch.allclose(loss, expect, atol=1e-5)
    loss.backward()
    assert torch.isfinite(student.grad).all()
    # top-k with a tail: gradients stay finite too
    s2 = student.detach().clone().requires_grad_(True)
    kd_loss(s2, labels, topk_targets(teacher, 2, TEMPS), 4.0, 0.3)[0].backward()
    assert torch.isfinite(s2.grad).all()


@pytest.mark.parametrize("tau", TEMPS)
def test_written_out_gradient_of_the_topk_tail_kl(tau):
    """TopkTailKL's backward against autograd's numerical gradient, and its value against autograd of the same
    maths written with torch ops (the dense formula over k stored ids + the tail bucket)."""
    from kd_pipeline.losses import TopkTailKL, teacher_terms

    teacher, student = _logits(b=16)
    t = topk_targets(teacher, 3, TEMPS)
    p, plogp = (v.double() for v in teacher_terms(t.values, t.lse[:, TEMPS.index(tau) :][:, :1], tau))
    s = student.double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: TopkTailKL.apply(x, tau, t.indices, p, plogp), (s,))
    log_q = torch.log_softmax(s / tau, dim=1)
    tail = torch.logsumexp(log_q.scatter(1, t.indices, float("-inf")), dim=1)
    expect = plogp - (p[:, :3] * log_q.gather(1, t.indices)).sum(1) - p[:, 3] * tail
    assert torch.allclose(TopkTailKL.apply(s, tau, t.indices, p, plogp), expect, atol=1e-12)


def test_a_tiny_student_tail_keeps_gradients_finite():
    """The student puts almost nothing outside the stored ids (log q_tail ~ -200): the exact tail stays finite."""
    teacher, _ = _logits(b=8)
    t = topk_targets(teacher, 3, TEMPS)
    s = torch.full((8, 10), -200.0)
    s.scatter_(1, t.indices, 0.0)
    s.requires_grad_(True)
    kl = sparse_kl(s, t, 1.0)
    kl.sum().backward()
    assert torch.isfinite(kl).all() and torch.isfinite(s.grad).all() and (kl > 1.0).all()
