"""Sequence stores: a 262,144-id vocabulary round-trips bit for bit with int32 ids, samples of any length
share token-major rows, q8 values decode within half a step, and the reader refuses bad tokens/counts."""

import numpy as np
import pytest
import torch

from kd_pipeline.errors import StoreError
from kd_pipeline.layout import Layout
from kd_pipeline.store import CacheWriter, Manifest, open_store
from kd_pipeline.store.format import indices_dtype
from kd_pipeline.store.values import _encode_values, decode_values, encode_targets, to_host
from kd_pipeline.store.samples_parts import span_table
from kd_pipeline.stream import student_batches
from kd_pipeline.targets import targets_from_arrays, teacher_rows


def seq_manifest(V, lengths, k=4, chunk_rows=8, values_dtype="float16", targets="topk", draws=None):
    return Manifest(
        format="kd-cache", version=1, kind="sequence", num_classes=V, top_k=k, temperatures=[1.0, 2.0],
        values_dtype=values_dtype, indices_dtype=indices_dtype(V),
        values_scheme="q8" if values_dtype == "uint8" else "relative", targets=targets,
        sample_draws=draws, sample_temperature=1.0 if draws else None,
        num_rows=int(sum(lengths)), chunk_rows=chunk_rows,
        teacher={"factory": "m:f", "kwargs": {}, "checkpoint_sha256": "0" * 64},
        dataset={"factory": "d:f", "kwargs": {}, "splits": ["train"], "split_sizes": {"train": len(lengths)},
                 "num_samples": len(lengths), "fingerprint": "sha256:x"},
        complete=False, created_with="test",
    )


def sequence_table(lengths):
    """samples.parquet of one split's samples, back to back."""
    return span_table(["train"], Layout({"train": len(lengths)}, 1, {"train": np.asarray(lengths)}).rows_of(0, len(lengths)), None)


def write_store(path, m, logits, tokens, lengths, seed=0):
    arrays = to_host(encode_targets(teacher_rows(logits, m, torch.Generator().manual_seed(seed)), m), m)
    arrays["tokens"] = tokens.astype(np.int32)
    w = CacheWriter.open(path, m)
    for b in w.pending_blocks():
        s, e = w.block_rows(b)
        w.write_block(b, {k: v[s:e] for k, v in arrays.items()})
    w.finalize(sequence_table(lengths))
    return arrays


def test_262144_vocab_round_trip(tmp_path):
    V, lengths = 262_144, [5, 3, 7, 1]
    R = sum(lengths)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(R, V, generator=g) * 3
    logits[torch.arange(R), torch.randint(200_000, V, (R,), generator=g)] = 40.0  # top id above any int16/uint16
    tokens = np.random.default_rng(0).integers(0, V, R)
    m = seq_manifest(V, lengths)
    written = write_store(tmp_path / "s", m, logits, tokens, lengths)
    store = open_store(tmp_path / "s")
    assert store.manifest.kind == "sequence" and store.manifest.indices_dtype == "int32"
    got = {name: a[:] for name, a in store.arrays.items()}
    for name, a in written.items():
        assert got[name].dtype == a.dtype and np.array_equal(got[name], a), name
    assert got["topk_indices"][:, 0].min() >= 200_000
    for b in range(store.num_blocks):
        store.check_block(b, store.read_block(b))
    assert store.samples.table()["num_rows"].to_pylist() == lengths
    # the student's stream returns whole samples with their own tokens, every sample once per pass
    batch = next(student_batches(store, None, batch_size=4, window=8, seed=1))
    assert batch["x"].shape == (4, 7) and batch["targets"].values.shape == (R, 4)
    seen = sorted(tuple(row[: int(n)].tolist()) for row, n in zip(batch["x"], batch["mask"].sum(1)))
    row0 = np.cumsum([0, *lengths[:-1]])
    assert seen == sorted(tuple(tokens[a : a + n].tolist()) for a, n in zip(row0, lengths))


def test_stream_rows_follow_their_samples_across_blocks(tmp_path):
    V, lengths = 50, [6, 9, 2, 11, 4, 8]  # 40 rows: samples straddle the 8-row blocks
    R = sum(lengths)
    logits = torch.randn(R, V, generator=torch.Generator().manual_seed(1))
    tokens = np.arange(R)  # token = its own row number (R < V), so a batch tells which rows it holds
    write_store(tmp_path / "s", seq_manifest(V, lengths, values_dtype="float32"), logits, tokens, lengths)
    store = open_store(tmp_path / "s")
    stream = student_batches(store, None, batch_size=2, window=2, seed=3)
    starts = set(np.cumsum([0, *lengths[:-1]]).tolist())
    for _ in range(6):
        b = next(stream)
        for row, n in zip(b["x"], b["mask"].sum(1).tolist()):
            got = row[:n].numpy()
            assert got[0] in starts and np.array_equal(got, np.arange(got[0], got[0] + n))  # one whole sample
        rows = b["x"][b["mask"]].numpy()
        assert np.array_equal(b["targets"].indices[:, 0].numpy(), logits.argmax(1).numpy()[rows])


def test_q8_values_within_half_a_step():
    rel = -np.abs(np.random.default_rng(0).normal(0, 6, (200, 32))).astype(np.float32)
    rel[:, 0] = 0.0
    a = {k: v.numpy() for k, v in _encode_values(torch.from_numpy(np.sort(rel, axis=1)[:, ::-1].copy()), "q8", "uint8").items()}
    assert a["topk_logits"].dtype == np.uint8 and a["value_scale"].dtype == np.float16
    back = decode_values(a, "q8")
    step = a["value_scale"].astype(np.float32)[:, None]
    assert (np.abs(back - np.sort(rel, axis=1)[:, ::-1]) <= step / 2 + 1e-6).all()
    assert (back[:, 0] == 0).all()


def test_reader_refuses_bad_tokens_and_counts(tmp_path):
    V, lengths = 30, [4, 4]
    logits = torch.randn(8, V)
    m = seq_manifest(V, lengths, k=16, targets="sampled", draws=16)
    write_store(tmp_path / "s", m, logits, np.zeros(8), lengths)
    store = open_store(tmp_path / "s")
    block = store.read_block(0)
    store.check_block(0, block)
    bad = dict(block, tokens=block["tokens"].copy())
    bad["tokens"][3] = V
    with pytest.raises(StoreError, match="tokens row 3"):
        store.check_block(0, bad)
    bad = dict(block, sample_counts=block["sample_counts"].copy())
    bad["sample_counts"][5, 0] += 1
    with pytest.raises(StoreError, match="sample_counts row 5"):
        store.check_block(0, bad)
    t = targets_from_arrays(block, store.manifest)
    assert (t.counts.sum(1) == 16).all()


def test_sampled_store_must_be_drawn_at_its_first_temperature():
    from kd_pipeline.store.format import parse_manifest

    raw = seq_manifest(320, [5, 3], targets="sampled", draws=8).model_dump(mode="json")
    assert parse_manifest(raw, "s").sample_temperature == 1.0
    with pytest.raises(StoreError, match=r"manifest.sample_temperature: 2.0 must equal temperatures\[0\] \(1.0\)"):
        parse_manifest({**raw, "sample_temperature": 2.0}, "s")
