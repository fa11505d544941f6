"""Packed ids (manifest `indices_scheme: packed`): ceil(log2 V) bits per id, lossless at every vocabulary the
LM benchmarks use, laid out as docs/store-format.md says; a packed store reads back exactly what a plain one
does, and damage to packed ids is refused like damage to plain ones."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from kd_pipeline.config import load_config
from kd_pipeline.errors import StoreError
from kd_pipeline.store import open_store
from kd_pipeline.store.files import chunk_files
from kd_pipeline.store.format import id_bits, packed_width, parse_manifest
from kd_pipeline.store.ids import encode_ids, pack_ids, unpack_ids
from kd_pipeline.store.verify import verify_store
from kd_pipeline.stream import student_batches
from kd_pipeline.targets import targets_from_arrays
from tests.test_corrupt_store import read_everything, rewrite_block
from tests.test_sequence_store import seq_manifest, write_store
from tests.test_store import blocks_for, manifest
from tests.test_store import write_store as write_cls_store

VOCABS = [2, 3, 320, 8192, 128_256, 151_936, 262_144, 2**24]


def packed(m):
    return m.model_copy(update={"indices_scheme": "packed"})


def reference_pack(ids: np.ndarray, bits: int) -> np.ndarray:
    """The documented layout, written the slow obvious way: bit j of id i is bit i*b + j of the row, bits
    numbered from the least significant bit of byte 0 (np.packbits with bitorder="little")."""
    row_bits = ((ids[:, :, None].astype(np.int64) >> np.arange(bits)) & 1).reshape(len(ids), -1).astype(np.uint8)
    return np.packbits(row_bits, axis=1, bitorder="little")


@pytest.mark.parametrize("V", VOCABS)
def test_round_trip_at_every_vocabulary_including_the_last_ids(V):
    b = id_bits(V)
    assert b == int(np.ceil(np.log2(V))) and (V - 1) < 2**b
    rng = np.random.default_rng(V)
    ks = sorted({1, 7, 8, 9, 32, 50, 128, *rng.integers(1, 200, 4).tolist()})
    for k in [k for k in ks if k <= V]:
        ids = np.stack([rng.choice(V, size=k, replace=False) if V < 10**6 else rng.integers(0, V, k) for _ in range(40)])
        ids[0] = np.arange(V - 1, V - 1 - k, -1)  # the largest ids, V-1 first
        ids[1] = np.arange(k)  # 0 and the smallest ids
        ids[2, :] = V - 1
        ids[2, k // 2] = 0
        p = pack_ids(ids, b)
        assert p.dtype == np.uint8 and p.shape == (40, packed_width(k, b)) == (40, -(-k * b // 8))
        assert np.array_equal(p, reference_pack(ids, b)), (V, k)
        got = unpack_ids(p, k, b)
        assert got.dtype == np.int32 and np.array_equal(got, ids), (V, k)
        assert np.array_equal(unpack_ids(p[7:19], k, b), ids[7:19])  # any row range decodes alone


def test_pack_refuses_ids_that_do_not_fit_and_unpack_a_wrong_width():
    with pytest.raises(ValueError, match=r"ids must be in \[0, 512\)"):
        pack_ids(np.array([[3, 512]]), 9)
    with pytest.raises(ValueError, match=r"ids must be in \[0, 512\)"):
        pack_ids(np.array([[-1, 5]]), 9)
    with pytest.raises(ValueError, match=r"expected \(N, 3\) uint8"):
        unpack_ids(np.zeros((4, 4), np.uint8), 2, 9)
    assert unpack_ids(np.zeros((0, 3), np.uint8), 2, 9).shape == (0, 2)


def _two_stores(tmp_path, V=151_936, lengths=(9, 4, 12, 7), k=12, values_dtype="uint8"):
    R = sum(lengths)
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(R, V, generator=g) * 2
    logits[torch.arange(R), V - 1 - torch.arange(R)] = 30.0  # top ids near V - 1
    tokens = np.random.default_rng(0).integers(0, V, R)
    m = seq_manifest(V, list(lengths), k=k, chunk_rows=8, values_dtype=values_dtype)
    plain = write_store(tmp_path / "plain", m, logits, tokens, list(lengths))
    pk = write_store(tmp_path / "packed", packed(m), logits, tokens, list(lengths))
    return plain, pk


def test_packed_store_reads_back_the_same_targets_as_plain(tmp_path):
    V, k = 151_936, 12
    plain, pk = _two_stores(tmp_path, V, k=k)
    assert plain["topk_indices"].dtype == np.int32 and plain["topk_indices"].shape[1] == k
    assert pk["topk_indices"].dtype == np.uint8 and pk["topk_indices"].shape[1] == 27  # 12 ids x 18 bits
    assert pk["topk_indices"].nbytes * 4 == plain["topk_indices"].nbytes * 27 // 12
    a, b = open_store(tmp_path / "plain"), open_store(tmp_path / "packed")
    assert (a.manifest.indices_scheme, b.manifest.indices_scheme) == ("plain", "packed")
    for blk in range(a.num_blocks):
        x, y = a.read_block(blk), b.read_block(blk)
        a.check_block(blk, x)
        b.check_block(blk, y)
        tx, ty = targets_from_arrays(x, a.manifest), targets_from_arrays(y, b.manifest)
        for key in ("values", "indices", "lse"):
            assert torch.equal(getattr(tx, key), getattr(ty, key)), key
    assert int(a.read_block(0)["topk_indices"][0, 0]) == V - 1
    # the student's stream: the same batches, bit for bit
    for sa, sb in zip(student_batches(a, None, 2, 2, seed=5), student_batches(b, None, 2, 2, seed=5)):
        assert torch.equal(sa["x"], sb["x"]) and torch.equal(sa["targets"].indices, sb["targets"].indices)
        assert torch.equal(sa["targets"].values, sb["targets"].values) and torch.equal(sa["targets"].lse, sb["targets"].lse)
        break
    r = verify_store(tmp_path / "packed")
    assert not r.problems, r.problems


def test_packed_classification_store_feeds_the_same_kd_batches(tmp_path):
    """A reader takes packed ids in either store kind (the classification writer itself writes plain ids)."""
    m = manifest(num_rows=300, num_classes=10, k=3, chunk_rows=128)
    torch.manual_seed(0)
    logits = torch.randn(300, 10) * 3
    write_cls_store(tmp_path / "plain", m, logits)
    mp = packed(m)
    blocks = blocks_for(m, logits)
    for arrays in blocks.values():
        arrays["topk_indices"] = encode_ids(arrays["topk_indices"], mp)  # 3 ids x 4 bits = 2 B per row
    from kd_pipeline.store import CacheWriter
    from kd_pipeline.store.samples_parts import samples_table

    with CacheWriter.open(tmp_path / "packed", mp) as w:
        for b in w.pending_blocks():
            w.write_block(b, blocks[b])
        sizes = m.dataset.split_sizes
        w.finalize(samples_table(sizes, {"train": np.arange(sizes["train"]) % 10, "transfer": np.full(sizes["transfer"], -1)}))
    sa, sb = open_store(tmp_path / "plain"), open_store(tmp_path / "packed")
    assert sb.arrays["topk_indices"].shape == (300, 2)
    ba = next(student_batches(sa, _Zeros(), 50, 4, seed=1))["targets"]
    bb = next(student_batches(sb, _Zeros(), 50, 4, seed=1))["targets"]
    assert torch.equal(ba.indices, bb.indices) and torch.equal(ba.values, bb.values)


class _Zeros:
    """Stands in for the dataset: the same zero input for every sample id (only the targets are compared)."""

    def __getitems__(self, keys):
        return {"x": torch.zeros(len(keys[1]), 1), "y": torch.full((len(keys[1]),), -1), "split": keys[0], "sample_id": keys[1]}

    def __len__(self):
        return 300


def _flip_bit(f, at_bit: int) -> None:
    d = bytearray(f.read_bytes())
    d[at_bit // 8] ^= 1 << (at_bit % 8)
    f.write_bytes(bytes(d))


def test_a_corrupted_packed_chunk_is_refused_naming_array_and_block(tmp_path):
    V, k = 151_936, 12
    _, pk = _two_stores(tmp_path, V, k=k)
    p = tmp_path / "packed"
    m = open_store(p).manifest
    b, bits, width = 1, id_bits(V), packed_width(k, id_bits(V))
    ids = unpack_ids(pk["topk_indices"][8:16], k, bits)  # block 1
    # flip the lowest bit of an id whose neighbour id is not in its row: every id stays valid and distinct,
    # so only the block's sha256 can tell
    row, i = next((r, i) for r in range(8) for i in range(k) if (ids[r, i] ^ 1) not in ids[r])
    _flip_bit(chunk_files(p, "topk_indices", b, 2)[0], row * width * 8 + i * bits)
    with pytest.raises(StoreError, match=r"array topk_indices block 1 \(rows 8..16\): bytes do not match the block's sha256"):
        read_everything(p)
    problems = verify_store(p).problems
    assert any(re.search(r"array topk_indices block 1 \(rows 8..16\): sha256 does not match its marker", x) for x in problems), problems
    assert m.indices_scheme == "packed"


@pytest.mark.parametrize("V", [320, 151_936])
def test_an_id_past_the_vocabulary_in_a_packed_block_is_refused_naming_the_row(tmp_path, V):
    _two_stores(tmp_path, V, k=12)
    p = tmp_path / "packed"
    bits = id_bits(V)

    def smuggle(a):  # the packed bytes of block 1 with row 3's id 5 set to V (fits in b bits), sha re-made
        ids = unpack_ids(a, 12, bits).copy()
        ids[3, 5] = V if V < 2**bits else 2**bits - 1
        a[:] = pack_ids(ids, bits)

    rewrite_block(p, "topk_indices", 1, smuggle)
    with pytest.raises(StoreError, match=rf"topk_indices row 11: class id outside \[0, {V}\)"):
        read_everything(p)


def test_stray_padding_bits_are_refused_naming_the_row(tmp_path):
    _two_stores(tmp_path, 320, k=12)  # 12 x 9 bits = 108 bits in 14 bytes: 4 padding bits
    p = tmp_path / "packed"
    rewrite_block(p, "topk_indices", 0, lambda a: a.__setitem__((6, -1), a[6, -1] | 0x80))
    with pytest.raises(StoreError, match=r"topk_indices row 6: padding bits after the last packed id are not 0"):
        read_everything(p)


def test_a_reader_that_ignores_indices_scheme_refuses_a_packed_store(tmp_path):
    """Why adding the field keeps format version 1: a reader that does not know it expects (R, k) int ids
    and refuses the packed uint8 array rather than misreading it."""
    _two_stores(tmp_path, 320, k=12)
    p = tmp_path / "packed"
    doc = json.loads((p / "zarr.json").read_text())
    del doc["attributes"]["kd_cache"]["indices_scheme"]
    (p / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(StoreError, match=r"array topk_indices has shape \(32, 14\), manifest says \(32, 12\)"):
        open_store(p)


def test_a_hostile_packed_manifest_cannot_ask_for_huge_unpacked_blocks():
    raw = packed(seq_manifest(2**24, [5], k=2**20, chunk_rows=600)).model_dump(mode="json")
    with pytest.raises(StoreError, match=r"array topk_indices would need [\d,]+ bytes per block unpacked \(limit"):
        parse_manifest(raw, "s")


def test_config_packs_sequence_stores_by_default_and_classification_ones_on_request(tmp_path):
    from kd_pipeline.cachepass import build_manifest
    from kd_pipeline.layout import Layout

    layout = Layout({"train": 1, "test": 1}, 1, None)
    summary = {"fingerprint": "sha256:x"}

    def scheme(path, *sets):
        return build_manifest(load_config(path, list(sets)), summary, layout, "0" * 64, {}).indices_scheme

    assert load_config("examples/lm/pipeline.yaml").cache.ids == "auto"
    assert scheme("examples/lm/pipeline.yaml") == "packed" and scheme("examples/lm/pipeline.yaml", "cache.ids=plain") == "plain"
    assert scheme("pipeline.yaml") == "plain" and scheme("pipeline.yaml", "cache.ids=packed") == "packed"


def test_plain_zarr_reads_packed_ids_as_the_format_page_says(tmp_path):
    """The numpy lines of docs/store-format.md (Packed ids), run on a packed store opened with zarr alone."""
    import zarr

    plain, _ = _two_stores(tmp_path, 262_144, k=12)
    doc = (Path(__file__).parents[1] / "docs" / "store-format.md").read_text()
    snippet = doc.split("### Packed ids", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    g = zarr.open_group(str(tmp_path / "packed"), mode="r")
    env = {"np": np, "g": g, "meta": g.attrs["kd_cache"], "rows": slice(0, 8)}
    exec(snippet, env)
    assert np.array_equal(env["ids"], plain["topk_indices"][:8])
