"""Writing a store: whole blocks (= one chunk of every array), each followed by a completion marker.

Why blocks: unaligned writes into a chunk rewrite the whole chunk (26-276x slower) and concurrent writers of
one chunk lose rows; whole-chunk writes from several processes are safe. So the unit of work, of resume and
of sharding is the block: process `shard` of `num_shards` writes blocks b with b % num_shards == shard.

Lifecycle: `CacheWriter.open(path, manifest)` creates the store, or resumes one whose manifest identity
matches (a different one is replaced: its parameters are stale); `pending_blocks()` lists blocks without a
marker; `write_block(b, arrays)` writes and then marks; `finalize(table)` checks every marker, writes
`samples.parquet` and only then sets `complete: true`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from ..errors import StoreError
from .format import ATTR, MARKERS, SAMPLES, Manifest, parse_manifest


def block_sha256(a: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(a)).cast("B")).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class CacheWriter:
    def __init__(self, path: Path, manifest: Manifest, group: zarr.Group):
        self.path = path
        self.manifest = manifest
        self.group = group
        self.specs = manifest.array_specs()
        self.arrays = {name: group[name] for name in self.specs}

    # ------------------------------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path, manifest: Manifest, create: bool = True) -> "CacheWriter":
        """Resume the store at `path` if its manifest identity matches, else (re)create it."""
        path = Path(path)
        existing = _read_manifest(path)
        if existing is not None and existing.identity() == manifest.identity():
            group = zarr.open_group(str(path), mode="r+", zarr_format=3)
            return cls(path, existing, group)
        if not create:
            raise StoreError(f"{path}: no store with matching parameters to resume")
        if path.exists():
            shutil.rmtree(path)
        return cls._create(path, manifest)

    @classmethod
    def _create(cls, path: Path, manifest: Manifest) -> "CacheWriter":
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"{path}: cannot create the store ({e.strerror})") from e
        m = manifest.model_copy(update={"complete": False})
        group = zarr.open_group(str(path), mode="w", zarr_format=3)
        for name, (shape, dtype) in m.array_specs().items():
            chunks = (m.chunk_rows, *shape[1:])
            group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, compressors=None, fill_value=0)
        (path / MARKERS).mkdir(exist_ok=True)
        group.attrs[ATTR] = m.model_dump(mode="json")  # written last: a store without it is not a store
        return cls(path, m, group)

    # ------------------------------------------------------------------------------------------- blocks
    def block_rows(self, b: int) -> tuple[int, int]:
        start = b * self.manifest.chunk_rows
        return start, min(start + self.manifest.chunk_rows, self.manifest.num_rows)

    def marker_path(self, b: int) -> Path:
        return self.path / MARKERS / f"block-{b:08d}.json"

    def pending_blocks(self, shard: int = 0, num_shards: int = 1) -> list[int]:
        return [
            b
            for b in range(shard, self.manifest.num_blocks, num_shards)
            if not self.marker_path(b).exists()
        ]

    def write_block(self, b: int, arrays: dict[str, np.ndarray]) -> None:
        """arrays: name -> the block's rows, each exactly (stop - start, ...) with the declared dtype."""
        start, stop = self.block_rows(b)
        if set(arrays) != set(self.specs):
            raise ValueError(f"block {b}: arrays {sorted(arrays)} != declared {sorted(self.specs)}")
        sums = {}
        for name, a in arrays.items():
            shape, dtype = self.specs[name]
            if a.shape != (stop - start, *shape[1:]) or a.dtype != np.dtype(dtype):
                raise ValueError(f"block {b}: {name} has {a.shape} {a.dtype}, expected {(stop - start, *shape[1:])} {dtype}")
            self.arrays[name][start:stop] = a
            sums[name] = block_sha256(a)
        marker = {"block": b, "rows": [start, stop], "sha256": sums}
        _atomic_write(self.marker_path(b), json.dumps(marker, sort_keys=True).encode())

    # ----------------------------------------------------------------------------------------- finalize
    def finalize(self, table: pa.Table) -> Manifest:
        missing = self.pending_blocks()
        if missing:
            raise StoreError(f"{self.path}: cannot finalize, {len(missing)} blocks unwritten (first: {missing[0]})")
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        _atomic_write(self.path / SAMPLES, buf.getvalue().to_pybytes())
        self.manifest = self.manifest.model_copy(update={"complete": True})
        self.group.attrs[ATTR] = self.manifest.model_dump(mode="json")
        return self.manifest


def _read_manifest(path: Path) -> Manifest | None:
    if not (path / "zarr.json").exists():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = zarr.open_group(str(path), mode="r").attrs.get(ATTR)
        return parse_manifest(raw, str(path))
    except Exception:
        return None  # unreadable or foreign: treated as absent, and replaced


def samples_table(split_sizes: dict[str, int], labels: dict[str, np.ndarray]) -> pa.Table:
    """One row per sample for classification stores: row = running index over splits in order."""
    ids, splits, rows, labs = [], [], [], []
    row = 0
    for split, n in split_sizes.items():
        ids.append(np.arange(n, dtype=np.int64))
        splits += [split] * n
        rows.append(np.arange(row, row + n, dtype=np.int64))
        labs.append(labels[split].astype(np.int64))
        row += n
    lab = np.concatenate(labs) if labs else np.zeros(0, np.int64)
    return pa.table(
        {
            "sample_id": pa.array(np.concatenate(ids) if ids else [], pa.int64()),
            "split": pa.array(splits, pa.string()),
            "row": pa.array(np.concatenate(rows) if rows else [], pa.int64()),
            "num_rows": pa.array(np.ones(row, np.int64), pa.int64()),
            "label": pa.array(lab, pa.int64(), mask=lab < 0),
        }
    )
