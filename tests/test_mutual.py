"""Deep mutual learning losses (kd_pipeline/mutual.py) against values and gradients worked by hand."""

import math

import pytest
import torch

from kd_pipeline.mutual import dml_loss, mutual_kl


def test_two_students_by_hand():
    # student 1 predicts (1/2, 1/2), student 2 predicts (3/4, 1/4); the label is class 0.
    z1 = torch.tensor([[0.0, 0.0]], requires_grad=True)
    z2 = torch.tensor([[math.log(3.0), 0.0]], requires_grad=True)
    y = torch.tensor([0])
    loss1, parts1 = dml_loss(z1, [z2], y)
    kl_21 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(p2 || p1)
    assert parts1["ce"] == pytest.approx(math.log(2.0)) and parts1["kl"] == pytest.approx(kl_21)
    assert float(loss1.detach()) == pytest.approx(math.log(2.0) + kl_21)
    loss1.backward()
    # d/dz1 [CE + KL(p2 || p1)] = (p1 - onehot(y)) + (p1 - p2) = (-1/2, 1/2) + (-1/4, 1/4)
    assert z1.grad.tolist() == [pytest.approx([-0.75, 0.75])]
    assert z2.grad is None  # the peer is a target: no gradient reaches it
    loss2, parts2 = dml_loss(z2, [z1], y)
    kl_12 = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # KL(p1 || p2): not symmetric
    assert parts2["ce"] == pytest.approx(-math.log(0.75)) and parts2["kl"] == pytest.approx(kl_12)
    loss2.backward()
    assert z2.grad.tolist() == [pytest.approx([(0.75 - 1) + (0.75 - 0.5), (0.25 - 0) + (0.25 - 0.5)])]


def test_cohort_mean_and_unlabelled_rows():
    g = torch.Generator().manual_seed(0)
    z = [torch.randn(6, 5, generator=g) for _ in range(3)]
    y = torch.tensor([1, -1, 4, -1, 0, 2])
    loss, parts = dml_loss(z[0], z[1:], y)
    kl = (mutual_kl(z[0], z[1]).mean() + mutual_kl(z[0], z[2]).mean()) / 2  # 1/(K-1) sum over peers
    ce = torch.nn.functional.cross_entropy(z[0][y >= 0], y[y >= 0])
    assert float(loss) == pytest.approx(float(ce + kl), rel=1e-6)
    assert mutual_kl(z[1], z[1]).abs().max() < 1e-6 and (mutual_kl(z[0], z[1]) > 0).all()
    _, parts = dml_loss(z[0], z[1:], torch.full((6,), -1))
    assert parts["ce"] == 0.0
    with pytest.raises(ValueError, match="at least one peer"):
        dml_loss(z[0], [], y)
