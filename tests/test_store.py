"""The store: what the writer wrote the reader returns bit for bit; plain zarr + pyarrow can read it as
docs/store-format.md says; half-written stores resume and are never read as complete."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import zarr

from kd_pipeline.errors import StoreError
from kd_pipeline.store import CacheWriter, Manifest, open_store
from kd_pipeline.store.format import indices_dtype
from kd_pipeline.store.samples_parts import samples_table
from kd_pipeline.targets import topk_targets

TEMPS = [1.0, 4.0]


def manifest(num_rows=1000, num_classes=10, k=3, chunk_rows=256, values_dtype="float32", features=None):
    return Manifest(
        format="kd-cache", version=1, kind="classification", num_classes=num_classes, top_k=k,
        temperatures=TEMPS, values_dtype=values_dtype, indices_dtype=indices_dtype(num_classes),
        num_rows=num_rows, chunk_rows=chunk_rows,
        teacher={"factory": "m:f", "kwargs": {}, "checkpoint_sha256": "0" * 64},
        dataset={"factory": "d:f", "kwargs": {}, "splits": ["train", "transfer"],
                 "split_sizes": {"train": num_rows // 4, "transfer": num_rows - num_rows // 4},
                 "num_samples": num_rows, "fingerprint": "sha256:x"},
        features=features or {}, complete=False, created_with="test",
    )


def blocks_for(m: Manifest, logits: torch.Tensor, feats=None):
    t = topk_targets(logits, m.top_k, tuple(m.temperatures))
    out = {}
    for b in range(m.num_blocks):
        s, e = b * m.chunk_rows, min((b + 1) * m.chunk_rows, m.num_rows)
        arrays = {
            "topk_logits": t.values[s:e].numpy().astype(m.values_dtype),
            "topk_indices": t.indices[s:e].numpy().astype(m.indices_dtype),
            "lse": t.lse[s:e].numpy().astype(np.float32),
        }
        for name in m.features:
            arrays[f"features/{name}"] = feats[s:e].numpy().astype(m.features[name].dtype)
        out[b] = arrays
    return out


def write_store(path, m, logits, feats=None, only=None):
    blocks = blocks_for(m, logits, feats)
    with CacheWriter.open(path, m) as w:
        for b in w.pending_blocks():
            if only is None or b in only:
                w.write_block(b, blocks[b])
        if only is None:
            sizes = m.dataset.split_sizes
            labels = {"train": np.arange(sizes["train"]) % m.num_classes, "transfer": np.full(sizes["transfer"], -1)}
            w.finalize(samples_table(sizes, labels))
    return blocks


def test_round_trip_bit_for_bit(tmp_path):
    m = manifest(num_rows=1000, features={"pen": {"shape": [4, 2], "dtype": "float16", "module": "body"}})
    logits = torch.randn(1000, 10) * 5
    feats = torch.randn(1000, 4, 2)
    blocks = write_store(tmp_path / "s", m, logits, feats)
    store = open_store(tmp_path / "s")
    assert store.manifest.complete and store.num_blocks == 4
    for b, arrays in blocks.items():
        got = store.read_block(b)
        assert set(got) == set(arrays)
        for name, a in arrays.items():
            assert got[name].dtype == a.dtype and np.array_equal(got[name], a), name
        store.check_block(b, got)


def test_plain_zarr_and_pyarrow_read_as_documented(tmp_path):
    """docs/store-format.md: p_T(i) = exp(topk_logits/tau - lse); with k = C the full distribution."""
    m = manifest(num_rows=600, k=10)
    logits = torch.randn(600, 10) * 3
    write_store(tmp_path / "s", m, logits)
    g = zarr.open_group(str(tmp_path / "s"), mode="r")
    meta = g.attrs["kd_cache"]
    assert meta["format"] == "kd-cache" and meta["version"] == 1 and meta["complete"] is True
    vals, ids, lse = g["topk_logits"][:], g["topk_indices"][:], g["lse"][:]
    t_i = meta["temperatures"].index(4.0)
    p = np.exp(vals / 4.0 - lse[:, t_i : t_i + 1])
    dense = torch.softmax(logits / 4.0, dim=1).numpy()
    np.testing.assert_allclose(p, np.take_along_axis(dense, ids.astype(np.int64), 1), atol=1e-6)
    assert np.all(np.diff(vals, axis=1) <= 0)  # sorted descending
    table = pq.read_table(tmp_path / "s" / "samples.parquet")
    assert table.column_names == ["sample_id", "split", "row", "num_rows", "label"]
    assert table.num_rows == 600 and table["label"].null_count == 450


def test_tail_mass_known_with_top_k(tmp_path):
    m = manifest(num_rows=300, k=3)
    logits = torch.randn(300, 10)
    write_store(tmp_path / "s", m, logits)
    g = zarr.open_group(str(tmp_path / "s"), mode="r")
    p = np.exp(g["topk_logits"][:] / 1.0 - g["lse"][:, :1])
    tail = 1 - p.sum(1)
    dense = torch.softmax(logits, 1).numpy()
    expect = 1 - np.sort(dense, 1)[:, ::-1][:, :3].sum(1)
    np.testing.assert_allclose(tail, expect, atol=1e-5)


def test_int32_indices_for_large_vocab(tmp_path):
    m = manifest(num_rows=64, num_classes=40000, k=4, chunk_rows=32)
    assert m.indices_dtype == "int32"
    logits = torch.randn(64, 40000)
    write_store(tmp_path / "s", m, logits)
    store = open_store(tmp_path / "s")
    got = store.read_block(1)["topk_indices"]
    assert got.dtype == np.int32 and got.max() >= 0
    assert np.array_equal(got, torch.topk(logits[32:], 4).indices.numpy())


def test_half_written_store_is_refused_then_resumed(tmp_path):
    m = manifest(num_rows=1000)
    logits = torch.randn(1000, 10)
    write_store(tmp_path / "s", m, logits, only={0, 2})
    with pytest.raises(StoreError, match="incomplete"):
        open_store(tmp_path / "s")
    w = CacheWriter.open(tmp_path / "s", m)  # same identity: resumed, finished blocks kept
    assert w.pending_blocks() == [1, 3]
    assert w.pending_blocks(shard=1, num_shards=2) == [1, 3]
    assert w.pending_blocks(shard=0, num_shards=2) == []
    w.close()
    full = tmp_path / "full"
    expect = write_store(full, m, logits)
    write_store(tmp_path / "s", m, logits)  # finishes the rest
    store = open_store(tmp_path / "s")
    for b in range(4):
        for name, a in store.read_block(b).items():
            assert np.array_equal(a, expect[b][name])


def test_changed_parameters_replace_a_stale_store(tmp_path):
    write_store(tmp_path / "s", manifest(k=3), torch.randn(1000, 10), only={0})
    w = CacheWriter.open(tmp_path / "s", manifest(k=4))
    assert w.pending_blocks() == [0, 1, 2, 3]
    assert json.loads((tmp_path / "s" / "zarr.json").read_text())["attributes"]["kd_cache"]["top_k"] == 4


def test_finalize_refuses_missing_blocks(tmp_path):
    m = manifest()
    w = CacheWriter.open(tmp_path / "s", m)
    with pytest.raises(StoreError, match="4 blocks unwritten"):
        w.finalize(samples_table({"train": 250, "transfer": 750}, {"train": np.zeros(250), "transfer": -np.ones(750)}))


def test_reader_refuses_future_version_and_wrong_dtype(tmp_path):
    write_store(tmp_path / "s", manifest(), torch.randn(1000, 10))
    g = zarr.open_group(str(tmp_path / "s"), mode="r+")
    meta = dict(g.attrs["kd_cache"])
    g.attrs["kd_cache"] = {**meta, "version": 2}
    with pytest.raises(StoreError, match="version 2 is not supported"):
        open_store(tmp_path / "s")
    g.attrs["kd_cache"] = {**meta, "values_dtype": "float16"}
    with pytest.raises(StoreError, match="array topk_logits has dtype float32, manifest says float16"):
        open_store(tmp_path / "s")


def test_check_block_catches_bad_ids_and_nan(tmp_path):
    write_store(tmp_path / "s", manifest(), torch.randn(1000, 10))
    store = open_store(tmp_path / "s")
    block = store.read_block(1)
    bad = {**block, "topk_indices": block["topk_indices"].copy()}
    bad["topk_indices"][5, 0] = 10
    with pytest.raises(StoreError, match="topk_indices row 261"):
        store.check_block(1, bad)
    bad = {**block, "topk_logits": block["topk_logits"].copy()}
    bad["topk_logits"][7, 1] = np.nan
    with pytest.raises(StoreError, match="topk_logits row 263"):
        store.check_block(1, bad)
    bad = {**block, "lse": block["lse"] - 100}
    with pytest.raises(StoreError, match="lse row 256"):
        store.check_block(1, bad)
