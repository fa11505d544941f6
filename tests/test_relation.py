"""RKD (kd_pipeline/relation.py) against a triangle worked by hand, a plain-python transcription of the paper's
equations, the authors' averaging convention, its invariances and its gradients."""

import itertools
import math

import pytest
import torch

from kd_pipeline.relation import rkd_loss

SQ2 = math.sqrt(2.0)


def test_right_triangles_by_hand():
    # teacher: a 3-4-5 right triangle; student: a right isosceles triangle with legs 1.
    t = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # distances: teacher 3, 4, 5 (mean 4) -> 3/4, 1, 5/4; student 1, 1, sqrt2 (mean (2 + sqrt2)/3)
    # -> 3 - 1.5 sqrt2, 3 - 1.5 sqrt2, 3 sqrt2 - 3. All |differences| < 1: Huber = d^2/2; each unordered
    # pair appears twice among the 6 ordered pairs, so the mean over them is the mean over the 3.
    diffs = [(3 - 1.5 * SQ2) - 0.75, (3 - 1.5 * SQ2) - 1.0, (3 * SQ2 - 3) - 1.25]
    dist = sum(d * d / 2 for d in diffs) / 3
    # angles: at the right-angle vertex cos 0 in both; at (3,0) cos 3/5 vs 1/sqrt2; at (0,4) 4/5 vs 1/sqrt2
    angle = (0.0 + (0.6 - 1 / SQ2) ** 2 / 2 + (0.8 - 1 / SQ2) ** 2 / 2) / 3
    assert dist == pytest.approx(0.0052219, abs=1e-7) and angle == pytest.approx(0.0033502, abs=1e-7)
    loss, parts = rkd_loss(s, t, w_dist=1.0, w_angle=0.0)
    assert parts == {"rkd_dist": pytest.approx(dist, rel=1e-5)} and float(loss) == pytest.approx(dist, rel=1e-5)
    loss, parts = rkd_loss(s, t, w_dist=25.0, w_angle=50.0)
    assert parts["rkd_angle"] == pytest.approx(angle, rel=1e-5)
    assert float(loss) == pytest.approx(25 * dist + 50 * angle, rel=1e-5)


def _huber(x, y):
    d = abs(x - y)
    return d * d / 2 if d <= 1 else d - 0.5


def _reference(s, t):
    """The paper's Eqs. 3-8 in plain python over ordered tuples of distinct samples, averaged."""
    b = len(s)

    def dist(p, q):
        return math.sqrt(sum((a - c) ** 2 for a, c in zip(p, q)))

    def psi_d(x):
        pairs = [(i, j) for i in range(b) for j in range(b) if i != j]
        mu = sum(dist(x[i], x[j]) for i, j in pairs) / len(pairs)
        return {(i, j): dist(x[i], x[j]) / mu for i, j in pairs}

    def psi_a(x, i, j, k):
        eij = [(a - c) / dist(x[i], x[j]) for a, c in zip(x[i], x[j])]
        ekj = [(a - c) / dist(x[k], x[j]) for a, c in zip(x[k], x[j])]
        return sum(a * c for a, c in zip(eij, ekj))

    ds, dt = psi_d(s), psi_d(t)
    dist_terms = [_huber(ds[p], dt[p]) for p in ds]
    triplets = list(itertools.permutations(range(b), 3))
    angle_terms = [_huber(psi_a(s, *x), psi_a(t, *x)) for x in triplets]
    big = max(abs(ds[p] - dt[p]) for p in ds), max(abs(psi_a(s, *x) - psi_a(t, *x)) for x in triplets)
    return sum(dist_terms) / len(dist_terms), sum(angle_terms) / len(angle_terms), big


def test_matches_plain_python_on_both_huber_branches():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(6, 5, generator=g, dtype=torch.float64)
    t[0] += 12.0  # an outlier: its normalised distances differ from the student's by more than 1
    s = torch.randn(6, 3, generator=g, dtype=torch.float64)  # other dimension: no projector needed
    d_ref, a_ref, (d_big, a_big) = _reference(s.tolist(), t.tolist())
    assert d_big > 1 and a_big > 1  # both branches of the Huber loss are exercised
    _, parts = rkd_loss(s, t, 1.0, 1.0)
    assert parts["rkd_dist"] == pytest.approx(d_ref, rel=1e-5)
    assert parts["rkd_angle"] == pytest.approx(a_ref, rel=1e-5)


def test_authors_averaging_differs_by_the_documented_factor():
    # The authors' code averages over all B^2 pairs / B^3 triplets (degenerate ones are 0 on both sides).
    g = torch.Generator().manual_seed(1)
    b = 7
    s, t = torch.randn(b, 4, generator=g), torch.randn(b, 9, generator=g)

    def all_tuples(x):
        d = torch.cdist(x, x)
        e = torch.nn.functional.normalize(x[None] - x[:, None], dim=2)
        return d / d[d > 0].mean(), torch.bmm(e, e.transpose(1, 2))

    (ds, cs), (dt, ct) = all_tuples(s), all_tuples(t)
    code_d = torch.nn.functional.smooth_l1_loss(ds, dt)
    code_a = torch.nn.functional.smooth_l1_loss(cs, ct)
    _, parts = rkd_loss(s, t, 1.0, 1.0)
    assert float(code_d) == pytest.approx(parts["rkd_dist"] * (b - 1) / b, rel=1e-5)
    assert float(code_a) == pytest.approx(parts["rkd_angle"] * (b - 1) * (b - 2) / b**2, rel=1e-5)


def test_zero_for_a_scaled_rotated_shifted_copy_in_another_dimension():
    g = torch.Generator().manual_seed(2)
    t = torch.randn(8, 3, 2, generator=g)  # any feature shape: flattened to 6
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=g))
    s = 3.7 * torch.cat([t.flatten(1), torch.zeros(8, 4)], dim=1) @ q + 5.0  # [8, 10]
    loss, parts = rkd_loss(s, t, 1.0, 1.0)
    assert parts["rkd_dist"] < 1e-10 and parts["rkd_angle"] < 1e-10
    s2 = s.clone()
    s2[0] += 1.0  # move one point: both relations change
    _, parts = rkd_loss(s2, t, 1.0, 1.0)
    assert parts["rkd_dist"] > 1e-4 and parts["rkd_angle"] > 1e-4


def test_gradients_reach_the_student_only():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(5, 4, generator=g, requires_grad=True)
    t = torch.randn(5, 6, generator=g, requires_grad=True)
    loss, _ = rkd_loss(s, t, 1.0, 2.0)
    loss.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None
    # a repeated sample (zero distance, no direction) keeps the loss and its gradient finite
    s2 = torch.cat([s.detach()[:4], s.detach()[:1]]).requires_grad_(True)
    loss, _ = rkd_loss(s2, t.detach(), 1.0, 2.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s2.grad).all()


def test_bad_batches_refused():
    with pytest.raises(ValueError, match="student batch 4 != teacher batch 3"):
        rkd_loss(torch.randn(4, 2), torch.randn(3, 2), 1.0, 1.0)
    with pytest.raises(ValueError, match="angle term needs a batch of >= 3"):
        rkd_loss(torch.randn(2, 2), torch.randn(2, 2), 1.0, 1.0)
    loss, parts = rkd_loss(torch.randn(2, 2), torch.randn(2, 2), 1.0, 0.0)  # distances alone need 2
    assert set(parts) == {"rkd_dist"}
