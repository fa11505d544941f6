"""Sampled targets (random-sampling KD): over many independent draws the stored-target loss averages to the
dense KL(teacher || student), at the sampling temperature and at another one (importance weights); the
reconstruction KL is 0 when every id is stored and grows as ids are dropped.

Tolerance: |mean - dense| <= 4 standard errors of the mean (estimated from the draws), per row, i.e. a
false alarm about once in 16,000 rows; a biased estimator (weights left out at tau != tau_s) must fail it."""

import numpy as np
import pytest
import torch

from kd_pipeline.lm.reconstruction import reconstruction_kl
from kd_pipeline.losses import dense_kl, sampled_kl, sparse_kl
from kd_pipeline.targets import Targets, through_store
from tests.test_sequence_store import seq_manifest

V, ROWS, DRAWS, REPEATS = 64, 4, 16, 4000


def _draws(values_dtype="float32"):
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(ROWS, V, generator=g) * 2.5
    student = torch.randn(ROWS, V, generator=g)
    m = seq_manifest(V, [ROWS], k=DRAWS, values_dtype=values_dtype, targets="sampled", draws=DRAWS)
    rep_t = teacher.repeat(REPEATS, 1)  # row i of repeat r is row i of the teacher: REPEATS independent draws
    return teacher, student, through_store(rep_t, m, g)  # through the store's encode/decode


def _mean_and_se(est):
    per = est.view(REPEATS, ROWS)
    return per.mean(0), per.std(0) / REPEATS**0.5


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_sampled_loss_is_unbiased_for_the_dense_kl(tau):
    teacher, student, t = _draws()
    mean, se = _mean_and_se(sampled_kl(student.repeat(REPEATS, 1), t, tau))
    dense = dense_kl(student, teacher, tau)
    assert (se > 0).all() and ((mean - dense).abs() <= 4 * se).all(), (mean, dense, se)


def test_without_importance_weights_the_test_detects_bias():
    teacher, student, t = _draws()
    tau = 2.0
    naive = Targets(t.values, t.indices, t.lse[:, [1, 0]], (2.0, 1.0), V, counts=t.counts)  # pretends tau_s = 2
    mean, se = _mean_and_se(sampled_kl(student.repeat(REPEATS, 1), naive, tau))
    assert ((mean - dense_kl(student, teacher, tau)).abs() > 4 * se).any()


def test_sampled_gradient_matches_dense_in_expectation():
    teacher, student, t = _draws()
    s = student.repeat(REPEATS, 1).requires_grad_(True)
    sampled_kl(s, t, 1.0).sum().backward()
    g_mean = s.grad.view(REPEATS, ROWS, V).mean(0)
    d = student.clone().requires_grad_(True)
    dense_kl(d, teacher, 1.0).sum().backward()
    assert torch.allclose(g_mean, d.grad, atol=0.02)


def test_reconstruction_kl_zero_with_every_id_and_grows_as_ids_drop():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(32, V, generator=g) * 3
    kls = []
    for k in (V, 16, 4):
        m = seq_manifest(V, [32], k=k, values_dtype="float32")
        t = through_store(z, m)
        comp, full = reconstruction_kl(z, t.values, t.indices, t.lse[:, 0], 1.0)
        kls.append((float(comp.mean()), float(full.mean())))
        # the top-k + tail loss of a student equal to the teacher is the compression KL
        assert torch.allclose(sparse_kl(z, t, 1.0), comp, atol=1e-5)
    assert abs(kls[0][0]) < 1e-5 and abs(kls[0][1]) < 1e-5
    assert kls[2][1] > kls[1][1] > 1e-3 and kls[1][0] < 1e-5  # exact values: only truncation loses
    m = seq_manifest(V, [32], k=16, values_dtype="uint8")
    t = through_store(z, m)
    comp, _ = reconstruction_kl(z, t.values, t.indices, t.lse[:, 0], 1.0)
    assert 0 < float(comp.mean()) < 1e-4  # 8-bit values lose a little (6e-6 here), the tail mass stays exact
