"""Multi-teacher mixture maths (kd_pipeline/mixture.py): exact against the dense mixture when every teacher
stored all classes, equal to the dense mixture of the even-spread reconstructions otherwise, a case worked
by hand, and the student's loss on the encoded mixture equal to the dense KL."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kd_pipeline.losses import sparse_kl
from kd_pipeline.mixture import as_relative, mixture_topk, teacher_probs
from kd_pipeline.store.values import encode_targets
from kd_pipeline.targets import Targets

C = 10


def _teachers(n=64, n_teachers=3, seed=0):
    g = np.random.default_rng(seed)
    return [g.normal(size=(n, C)) * s for s in (1.0, 3.0, 6.0)[:n_teachers]], g


def _softmax(z, tau):
    e = np.exp(z / tau - (z / tau).max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _stored(z, k, tau):
    """What a top-k store gives at tau: the k largest probabilities and their ids."""
    p = _softmax(z, tau)
    ids = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(p, ids, axis=1), ids


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_full_k_equals_the_dense_mixture(tau):
    zs, g = _teachers()
    w = [0.5, 0.3, 0.2]
    dense = sum(wj * _softmax(z, tau) for wj, z in zip(w, zs))  # (n, C)
    probs, ids = [], []
    for z in zs:
        perm = np.argsort(g.random((len(z), C)), axis=1)  # stored in any order
        probs.append(np.take_along_axis(_softmax(z, tau), perm, axis=1))
        ids.append(perm)
    p, i = mixture_topk(probs, ids, w, C, C)
    assert np.allclose(p, -np.sort(-dense, axis=1), rtol=0, atol=1e-15)
    assert np.allclose(np.take_along_axis(dense, i, axis=1), p, rtol=0, atol=1e-15)
    assert np.abs(p.sum(axis=1) - 1).max() < 1e-12  # no tail


def _even_spread(p, ids, k):
    """Dense reconstruction of one teacher under the tail rule, written independently: stored ids keep
    their probability, every other id gets tail / (C - k)."""
    n = len(p)
    dense = np.zeros((n, C))
    for r in range(n):
        tail = 1.0 - p[r].sum()
        dense[r, :] = tail / (C - k) if k < C else 0.0
        dense[r, ids[r]] = p[r]
    return dense


@pytest.mark.parametrize("out_k", [1, 3, 7, 10])
def test_topk_is_the_dense_mixture_of_even_spread_reconstructions(out_k):
    zs, _ = _teachers(seed=1)
    ks, w, tau = (2, 5, 3), [0.2, 0.3, 0.5], 2.0
    stored = [_stored(z, k, tau) for z, k in zip(zs, ks)]
    dense = sum(wj * _even_spread(p, i, k) for wj, (p, i), k in zip(w, stored, ks))
    p, i = mixture_topk([s[0] for s in stored], [s[1] for s in stored], w, C, out_k)
    assert p.shape == i.shape == (64, out_k)
    assert np.allclose(p, -np.sort(-dense, axis=1)[:, :out_k], rtol=0, atol=1e-15)
    assert np.allclose(np.take_along_axis(dense, i, axis=1), p, rtol=0, atol=1e-15)
    assert all(len(set(row)) == out_k for row in i.tolist())  # distinct ids, fillers included
    union = np.array([len(set().union(*(s[1][r] for s in stored))) for r in range(64)])
    assert (union < 7).any() and (union > 7).any()  # out_k = 7 needs fillers in some rows, drops ids in others


def test_two_top1_teachers_by_hand():
    # C = 4. Teacher A stored only class 0 with 0.6 (tail 0.4), B only class 1 with 0.5 (tail 0.5).
    # Even spread: A gives 0.4/3 to classes 1, 2, 3; B gives 0.5/3 to 0, 2, 3. Equal weights:
    # M(0) = (0.6 + 0.5/3)/2 = 0.38333, M(1) = (0.4/3 + 0.5)/2 = 0.31667, M(2) = M(3) = (0.4/3 + 0.5/3)/2 = 0.15
    a = (np.array([[0.6]]), np.array([[0]]))
    b = (np.array([[0.5]]), np.array([[1]]))
    p, i = mixture_topk([a[0], b[0]], [a[1], b[1]], [0.5, 0.5], 4, 2)
    assert i.tolist() == [[0, 1]] and p[0] == pytest.approx([0.383333333, 0.316666667])
    assert 1 - p.sum() == pytest.approx(0.3)  # the tail bucket: classes 2 and 3
    p, i = mixture_topk([a[0], b[0]], [a[1], b[1]], [0.5, 0.5], 4, 3)
    assert i.tolist() == [[0, 1, 2]] and p[0, 2] == pytest.approx(0.15)  # the smallest id outside the union


def test_stored_mass_above_one_is_scaled_back():
    v = np.array([[0.0, -0.1]], np.float32)
    p = teacher_probs(v, np.array([0.6], np.float32), 1.0)  # exp(-0.6) + exp(-0.7) = 1.045 > 1
    assert p.sum() == pytest.approx(1.0) and p[0, 0] / p[0, 1] == pytest.approx(np.exp(0.1))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_student_loss_on_the_encoded_mixture_equals_the_dense_kl(dtype):
    zs, _ = _teachers(seed=2)
    w, tau = [0.6, 0.1, 0.3], 4.0
    dense = sum(wj * _softmax(z, tau) for wj, z in zip(w, zs))
    p, i = mixture_topk([_softmax(z, tau) for z in zs], [np.tile(np.arange(C), (64, 1))] * 3, w, C, C)
    rel, lse = as_relative(p, tau)
    assert np.allclose(np.exp(rel / tau - lse), p, rtol=1e-12, atol=0)
    spec = SimpleNamespace(values_scheme="relative", values_dtype=dtype, indices_dtype="int16", indices_scheme="plain", temperatures=[tau])
    arrays = encode_targets({"values": torch.from_numpy(rel), "ids": torch.from_numpy(i), "lse": torch.from_numpy(lse)}, spec)
    t = Targets(arrays["topk_logits"].float(), torch.from_numpy(i), arrays["lse"], (tau,), C)
    s = torch.randn(64, C, generator=torch.Generator().manual_seed(0)) * 2
    log_q = torch.log_softmax(s.double() / tau, dim=1).numpy()
    want = (dense * (np.log(dense) - log_q)).sum(axis=1)
    got = sparse_kl(s, t, tau).double().numpy()
    assert np.allclose(got, want, rtol=1e-4, atol=1e-6 if dtype == "float32" else 2e-4)
