"""Stores made wrong on purpose: each is refused by the reader with its own one-line StoreError, and
`kd verify` reports it (one line per problem, exit 2). Then a property test: random manifests and random
byte-level damage either read back the original data exactly or raise the tool's own error type."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from kd_pipeline.cli import app
from kd_pipeline.errors import KDError, StoreError
from kd_pipeline.store import open_store
from kd_pipeline.store.files import write_manifest
from kd_pipeline.store.markers import block_sha256, marker_path
from kd_pipeline.store.verify import verify_store
from tests.test_store import manifest, write_store

FEATS = {"pen": {"shape": [2], "dtype": "float16", "module": "body"}}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A valid 300-row store (3 blocks of 128 rows) with one feature array."""
    p = tmp_path_factory.mktemp("pristine") / "s"
    torch.manual_seed(0)
    write_store(p, manifest(num_rows=300, chunk_rows=128, features=FEATS), torch.randn(300, 10) * 3, torch.randn(300, 2))
    return p


def read_everything(path: Path) -> dict:
    """What a student would use: open (cheap checks), then every block read and checked."""
    s = open_store(path)
    try:
        out = {"samples": s.samples.table()}
        for b in range(s.num_blocks):
            block = s.read_block(b)
            s.check_block(b, block)
            for k, v in block.items():
                out.setdefault(k, []).append(v)
        return {k: (np.concatenate(v) if isinstance(v, list) else v) for k, v in out.items()}
    finally:
        s.close()


# ------------------------------------------------------------------------------------------- damage kits
def meta(p: Path) -> dict:
    return json.loads((p / "zarr.json").read_text())["attributes"]["kd_cache"]


def set_meta(p: Path, **fields) -> None:
    write_manifest(p, {**meta(p), **fields})


def rewrite_block(p: Path, name: str, b: int, edit) -> None:
    """Change a block's bytes AND its marker: a store that is consistent but wrong in content."""
    g = zarr.open_group(str(p), mode="r+")
    m = meta(p)
    start, stop = b * m["chunk_rows"], min((b + 1) * m["chunk_rows"], m["num_rows"])
    a = g[name][start:stop]
    edit(a)
    g[name][start:stop] = a
    mk = json.loads(marker_path(p, b).read_text())
    mk["sha256"][name] = block_sha256(a)
    marker_path(p, b).write_text(json.dumps(mk))


def rewrite_samples(p: Path, edit) -> None:
    """Change samples.parquet AND its checksum marker."""
    import hashlib

    t = edit(pq.read_table(p / "samples.parquet"))
    buf = pa.BufferOutputStream()
    pq.write_table(t, buf)
    data = buf.getvalue().to_pybytes()
    (p / "samples.parquet").write_bytes(data)
    (p / "_markers" / "samples.json").write_text(json.dumps({"sha256": hashlib.sha256(data).hexdigest()}))


def flip_byte(f: Path, at: int) -> None:
    d = bytearray(f.read_bytes())
    d[at % len(d)] ^= 0x01
    f.write_bytes(bytes(d))


def _set(a, idx, v):
    a[idx] = v


def _dup_row(t: pa.Table) -> pa.Table:
    idx = np.arange(t.num_rows)
    idx[7] = 6  # row 7's entry replaced by a second copy of row 6
    return t.take(pa.array(idx))


CASES = {
    "flipped byte in one chunk": (lambda p: flip_byte(p / "lse" / "c" / "2" / "0", 9), r"array lse block 2 \(rows 256..300\): bytes do not match the block's sha256"),
    "truncated chunk": (lambda p: (p / "topk_indices/c/1/0").write_bytes((p / "topk_indices/c/1/0").read_bytes()[:100]), r"array topk_indices block 1 \(rows 128..256\): cannot read, truncated or corrupt chunk"),
    "deleted chunk": (lambda p: (p / "topk_logits/c/0/0").unlink(), r"array topk_logits block 0 \(rows 0..128\): bytes do not match"),
    "missing array": (lambda p: shutil.rmtree(p / "lse"), r"array lse is missing"),
    "manifest with a wrong type": (lambda p: set_meta(p, num_classes="ten"), r"manifest.num_classes: Input should be a valid integer"),
    "manifest from a future version": (lambda p: set_meta(p, version=2), r"store format version 2 is not supported \(this tool reads version 1\)"),
    "manifest is not JSON": (lambda p: (p / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gro'), r"zarr.json: unreadable"),
    "out-of-range ids": (lambda p: rewrite_block(p, "topk_indices", 1, lambda a: _set(a, (5, 0), 10)), r"topk_indices row 133: class id outside \[0, 10\)"),
    "negative ids": (lambda p: rewrite_block(p, "topk_indices", 0, lambda a: _set(a, (3, 2), -1)), r"topk_indices row 3: class id outside"),
    "repeated id in a row": (lambda p: rewrite_block(p, "topk_indices", 0, lambda a: _set(a, (4, 1), a[4, 0])), r"topk_indices row 4: the same class id twice"),
    "NaN logits": (lambda p: rewrite_block(p, "topk_logits", 2, lambda a: _set(a, (1, 1), np.nan)), r"topk_logits row 257: non-finite logit"),
    "unsorted logits": (lambda p: rewrite_block(p, "topk_logits", 1, lambda a: _set(a, (0, 2), a[0, 0] + 1)), r"topk_logits row 128: not sorted in descending order"),
    "lse below the top logit": (lambda p: rewrite_block(p, "lse", 0, lambda a: _set(a, (9, 0), -50.0)), r"lse row 9: below max\(logit\)/tau"),
    "parquet with a missing row": (lambda p: rewrite_samples(p, lambda t: t.slice(1)), r"samples.parquet: has 299 rows, manifest says num_rows=300"),
    "parquet with a duplicated row": (lambda p: rewrite_samples(p, _dup_row), r"samples.parquet: row 6 \(table row \d+\): rows are not sorted, or overlap or leave a gap"),
    "parquet with an out-of-range label": (lambda p: rewrite_samples(p, lambda t: t.set_column(4, "label", pa.array([12] + t["label"].to_pylist()[1:], pa.int64()))), r"samples.parquet: table row 0: label 12 outside \[0, 10\)"),
    "parquet bytes changed": (lambda p: flip_byte(p / "samples.parquet", 200), r"samples.parquet: bytes do not match the sha256"),
    "missing block marker": (lambda p: marker_path(p, 1).unlink(), r"completion marker of block 1 is missing"),
    "block marker nested 30,000 deep": (lambda p: marker_path(p, 1).write_text("[" * 30_000), r"completion marker of block 1 is not valid JSON"),
    "incomplete store": (lambda p: set_meta(p, complete=False), r"store is incomplete \(complete: false\); rerun the cache_teacher stage"),
    "feature name with a path": (lambda p: set_meta(p, features={"../../etc": FEATS["pen"]}), r"manifest.features: invalid name '../../etc'"),
    "oversized feature shape": (lambda p: set_meta(p, features={"pen": {**FEATS["pen"], "shape": [2**24, 2**24]}}), r"array features/pen would need [\d,]+ bytes per block \(limit"),
    "absurd row count": (lambda p: set_meta(p, num_rows=2**50), r"manifest.num_rows: Input should be less than or equal to"),
    "split sizes that do not add up": (lambda p: set_meta(p, dataset={**meta(p)["dataset"], "split_sizes": {"train": 75, "transfer": 10**9}}), r"split_sizes: .* must add up to num_rows=300"),
    "array chunks larger than declared": (lambda p: _rechunk(p), r"array lse has chunks \(128, 1000\), manifest says \(128, 2\)"),
}


def _rechunk(p: Path) -> None:
    f = p / "lse" / "zarr.json"
    d = json.loads(f.read_text())
    d["chunk_grid"]["configuration"]["chunk_shape"] = [128, 1000]
    f.write_text(json.dumps(d))


runner = CliRunner()


@pytest.mark.parametrize("case", list(CASES))
def test_each_damaged_store_is_refused_with_its_own_line(case, pristine, tmp_path):
    damage, expect = CASES[case]
    p = tmp_path / "s"
    shutil.copytree(pristine, p)
    damage(p)
    with pytest.raises(StoreError) as e:
        read_everything(p)
    msg = str(e.value)
    assert "\n" not in msg and re.search(expect, msg), msg
    r = runner.invoke(app, ["verify", str(p)])
    assert r.exit_code == 2, r.output
    problems = [x for x in r.output.splitlines() if x.startswith("problem: ")]
    assert problems and "Traceback" not in r.output


def test_verify_passes_a_good_store_and_says_what_it_checked(pristine):
    r = runner.invoke(app, ["verify", str(pristine)])
    assert r.exit_code == 0, r.output
    assert "blocks: 3 of 3 match their sha256 markers" in r.output and "samples.parquet: sha256 matches" in r.output


def test_verify_lists_every_problem_not_just_the_first(pristine, tmp_path):
    p = tmp_path / "s"
    shutil.copytree(pristine, p)
    flip_byte(p / "lse" / "c" / "0" / "0", 5)
    flip_byte(p / "features" / "pen" / "c" / "2" / "0", 3)
    marker_path(p, 1).unlink()
    r = verify_store(p)
    assert len(r.problems) == 3, r.problems
    assert "array lse block 0" in r.problems[0] and "block 1 is missing" in r.problems[1] and "array features/pen block 2" in r.problems[2]


# ------------------------------------------------------------------------------------------- properties
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


def _paths(d, prefix=()):
    for k, v in d.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from _paths(v, prefix + (k,))


def _reads_right_or_refuses(p: Path, original: dict) -> None:
    try:
        got = read_everything(p)
    except KDError as e:
        assert "\n" not in str(e) and len(str(e)) < 600  # refused, in one line of the tool's own words
    else:
        assert got.keys() == original.keys()
        for k, v in original.items():
            assert (got[k].equals(v) if k == "samples" else got[k].tobytes() == v.tobytes()), k
    r = verify_store(p)  # never raises either
    assert all("\n" not in x for x in r.problems)


# 40 examples each keeps the suite fast; KD_HYPOTHESIS_EXAMPLES=600 ran clean too (2 x 600, ~2 min).
_SETTINGS = settings(max_examples=int(os.environ.get("KD_HYPOTHESIS_EXAMPLES", 40)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@_SETTINGS
@given(data=st.data())
def test_random_manifests_read_right_or_raise_kderror(pristine, tmp_path_factory, data):
    original = read_everything(pristine)
    p = tmp_path_factory.mktemp("m") / "s"
    shutil.copytree(pristine, p)
    m = meta(p)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(sorted(_paths(m))))
        node = m
        for k in path[:-1]:
            node = node[k]
        if data.draw(st.booleans()):
            node[path[-1]] = data.draw(JSON)
        else:
            del node[path[-1]]
    write_manifest(p, m)
    _reads_right_or_refuses(p, original)


@_SETTINGS
@given(data=st.data())
def test_random_damage_reads_right_or_raises_kderror(pristine, tmp_path_factory, data):
    original = read_everything(pristine)
    p = tmp_path_factory.mktemp("d") / "s"
    shutil.copytree(pristine, p)
    files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("_lock"))
    for _ in range(data.draw(st.integers(1, 3))):
        f = data.draw(st.sampled_from(files))
        if not f.exists():
            continue
        how = data.draw(st.sampled_from(["flip", "truncate", "delete", "append", "zero"]))
        size = f.stat().st_size
        if how == "flip" and size:
            d = bytearray(f.read_bytes())
            d[data.draw(st.integers(0, size - 1))] ^= data.draw(st.integers(1, 255))
            f.write_bytes(bytes(d))
        elif how == "truncate":
            f.write_bytes(f.read_bytes()[: data.draw(st.integers(0, max(0, size - 1)))])
        elif how == "delete":
            f.unlink()
        elif how == "append":
            f.write_bytes(f.read_bytes() + data.draw(st.binary(min_size=1, max_size=64)))
        else:
            f.write_bytes(b"\0" * size)
    _reads_right_or_refuses(p, original)


def test_repair_by_deleting_a_corrupt_blocks_marker(pristine, tmp_path):
    """docs/integrity.md: delete the marker of a block verify calls corrupt, rerun the writer: only that block
    is recomputed and the store verifies again."""
    from kd_pipeline.store import CacheWriter
    from kd_pipeline.store.samples_parts import samples_table
    from tests.test_store import blocks_for

    p = tmp_path / "s"
    shutil.copytree(pristine, p)
    flip_byte(p / "topk_logits" / "c" / "1" / "0", 11)
    assert "array topk_logits block 1" in verify_store(p).problems[0]
    marker_path(p, 1).unlink()
    m = open_store(pristine).manifest
    torch.manual_seed(0)
    blocks = blocks_for(m, torch.randn(300, 10) * 3, torch.randn(300, 2))  # the same teacher outputs again
    with CacheWriter.open(p, m) as w:
        assert w.pending_blocks() == [1]
        w.write_block(1, blocks[1])
        w.finalize(samples_table(m.dataset.split_sizes, {"train": np.arange(75) % 10, "transfer": np.full(225, -1)}))
    r = verify_store(p)
    assert r.problems == [] and "blocks: 3 of 3 match" in r.checked[2]
