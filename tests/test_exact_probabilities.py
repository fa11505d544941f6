"""Stored probabilities are exact in every store: for every kind and value dtype, at every declared tau, the
probability mass read back on the stored ids is within 1e-3 (relative) of the teacher's, and the tail mass
1 - sum p is never negative, whatever the logits' offset or scale (property tests), including the field
reports: an offset of 1000, |z| ~ 92, logits beyond float16's 65504."""

import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kd_pipeline.store import Manifest
from kd_pipeline.store.format import indices_dtype
from kd_pipeline.targets import through_store

SETTINGS = settings(max_examples=int(os.environ.get("KD_HYPOTHESIS_EXAMPLES", 40)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def manifest(kind: str, C: int, k: int, dtype: str, temps: list[float]) -> Manifest:
    return Manifest(
        format="kd-cache", version=1, kind=kind, num_classes=C, top_k=k, temperatures=temps, values_dtype=dtype,
        indices_dtype=indices_dtype(C), values_scheme="q8" if dtype == "uint8" else "relative", num_rows=1, chunk_rows=1,
        teacher={"factory": "m:f", "kwargs": {}, "checkpoint_sha256": "0" * 64},
        dataset={"factory": "d:f", "kwargs": {}, "splits": ["train"], "split_sizes": {"train": 1}, "num_samples": 1, "fingerprint": "x"},
        complete=False, created_with="test",
    )


def check(z: torch.Tensor, m: Manifest) -> None:
    """z (n, C) float32 teacher logits: the store's read-back mass on its ids vs the teacher's, per tau."""
    t = through_store(z, m, torch.Generator().manual_seed(0))
    ids = t.indices.numpy()
    for i, tau in enumerate(m.temperatures):
        zz = z.double().numpy() / tau
        p_teacher = np.exp(zz - zz.max(1, keepdims=True))
        p_teacher /= p_teacher.sum(1, keepdims=True)
        want = np.take_along_axis(p_teacher, ids, 1).sum(1)
        got = np.exp(t.values.double().numpy() / tau - t.lse[:, i : i + 1].double().numpy()).sum(1)
        assert (np.abs(got - want) <= 1e-3 * want + 1e-12).all(), (tau, np.abs(got / want - 1).max())
        assert (1.0 - got >= -1e-12).all(), (tau, (1.0 - got).min())  # never negative (but for this sum's own rounding)


@SETTINGS
@given(
    kind=st.sampled_from(["classification", "sequence"]),
    dtype=st.sampled_from(["float16", "float32", "uint8"]),
    C=st.integers(2, 300),
    k_frac=st.floats(0.0, 1.0),
    scale=st.floats(1e-3, 1e3),
    offset=st.floats(-1e6, 1e6),
    temps=st.lists(st.floats(0.25, 20.0), min_size=1, max_size=3, unique=True),
    seed=st.integers(0, 2**31 - 1),
)
def test_read_back_mass_is_the_teachers_for_any_offset_and_scale(kind, dtype, C, k_frac, scale, offset, temps, seed):
    k = max(1, min(C, int(round(k_frac * C))))
    z = torch.randn(16, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale + offset
    check(z.float(), manifest(kind, C, k, dtype, temps))


@pytest.mark.parametrize("dtype", ["float16", "float32", "uint8"])
@pytest.mark.parametrize("what", ["offset 1000", "|z| ~ 92", "beyond float16"])
def test_field_reports(dtype, what):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2000, 10, generator=g) * 3
    z = {"offset 1000": z + 1000.0, "|z| ~ 92": z / z.abs().amax(1, keepdim=True) * 92.0, "beyond float16": z * 3e4}[what]
    m = manifest("classification", 10, 3, dtype, [1.0, 4.0])
    check(z, m)
    t = through_store(z, m)
    assert torch.isfinite(t.values).all() and torch.isfinite(t.lse).all()
