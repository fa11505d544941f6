"""Opening a store for reading: validate cheaply first, then read whole blocks.

`open_store` checks the manifest (schema, version, `complete`), every declared array (present, dtype,
shape, chunking) and `samples.parquet` (columns, types, row coverage) before any target is used. Each block
read by training can also be checked (`check_block`): ids in range, finite logits, lse >= max(logit)/tau.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from ..errors import StoreError
from .format import ATTR, SAMPLES, Manifest, parse_manifest
from .values import decode_values

_SAMPLE_COLUMNS = {
    "sample_id": pa.int64(),
    "split": pa.string(),
    "row": pa.int64(),
    "num_rows": pa.int64(),
    "label": pa.int64(),
}


class CacheStore:
    def __init__(self, path: Path, manifest: Manifest, arrays: dict[str, zarr.Array], samples: pa.Table):
        self.path = path
        self.manifest = manifest
        self.arrays = arrays  # "topk_logits", "topk_indices", "lse", "features/<name>"
        self.samples = samples
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(arrays)))

    @property
    def num_blocks(self) -> int:
        return self.manifest.num_blocks

    def block_rows(self, b: int) -> tuple[int, int]:
        start = b * self.manifest.chunk_rows
        return start, min(start + self.manifest.chunk_rows, self.manifest.num_rows)

    def read_block(self, b: int) -> dict[str, np.ndarray]:
        """All arrays' rows of block b; one chunk read per array, issued concurrently (~0.6 ms each)."""
        start, stop = self.block_rows(b)
        futs = {name: self._pool.submit(a.__getitem__, slice(start, stop)) for name, a in self.arrays.items()}
        try:
            return {name: f.result() for name, f in futs.items()}
        except Exception as e:
            raise StoreError(f"{self.path}: block {b} (rows {start}..{stop}): cannot read ({type(e).__name__}: {e})") from e

    def check_block(self, b: int, block: dict[str, np.ndarray]) -> None:
        """Cheap per-block checks before training on it; raises StoreError naming array and row."""
        start, _ = self.block_rows(b)
        m = self.manifest
        idx = block["topk_indices"]
        bad = np.flatnonzero(((idx < 0) | (idx >= m.num_classes)).any(axis=1))
        if bad.size:
            raise StoreError(f"{self.path}: topk_indices row {start + bad[0]}: class id outside [0, {m.num_classes})")
        vals = decode_values(block, m.values_scheme)
        bad = np.flatnonzero(~np.isfinite(vals).all(axis=1))
        if bad.size:
            raise StoreError(f"{self.path}: topk_logits row {start + bad[0]}: non-finite logit")
        lse = block["lse"]
        top = vals[:, :1] / np.asarray(m.temperatures, np.float32)[None, :]
        # lse(z/tau) >= max(z)/tau exactly; allow fp16 rounding of the stored top logit.
        tol = 1e-3 * np.maximum(1.0, np.abs(top)) + 1e-4
        bad = np.flatnonzero(~(np.isfinite(lse) & (lse >= top - tol)).all(axis=1))
        if bad.size:
            raise StoreError(f"{self.path}: lse row {start + bad[0]}: below max(logit)/tau or not finite")
        if "tokens" in block:
            bad = np.flatnonzero((block["tokens"] < 0) | (block["tokens"] >= m.num_classes))
            if bad.size:
                raise StoreError(f"{self.path}: tokens row {start + bad[0]}: token id outside [0, {m.num_classes})")
        if "sample_counts" in block:
            bad = np.flatnonzero(block["sample_counts"].astype(np.int64).sum(axis=1) != m.sample_draws)
            if bad.size:
                raise StoreError(f"{self.path}: sample_counts row {start + bad[0]}: counts do not sum to sample_draws={m.sample_draws}")

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def open_store(path: str | Path, allow_incomplete: bool = False) -> CacheStore:
    path = Path(path)
    where = str(path)
    if not (path / "zarr.json").is_file():
        raise StoreError(f"{where}: no store here (no zarr.json); run the cache_teacher stage first")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr warns about samples.parquet and _markers/
            group = zarr.open_group(str(path), mode="r", zarr_format=3)
            raw = group.attrs.get(ATTR)
    except Exception as e:
        raise StoreError(f"{where}/zarr.json: unreadable ({type(e).__name__}: {e})") from e
    m = parse_manifest(raw, where)
    if not m.complete and not allow_incomplete:
        raise StoreError(f"{where}: store is incomplete (complete: false); rerun the cache_teacher stage to finish it")
    arrays = {name: _open_array(group, name, shape, dtype, m, where) for name, (shape, dtype) in m.array_specs().items()}
    samples = _read_samples(path, m) if m.complete else pa.table({k: pa.array([], t) for k, t in _SAMPLE_COLUMNS.items()})
    return CacheStore(path, m, arrays, samples)


def _open_array(group: zarr.Group, name: str, shape, dtype: str, m: Manifest, where: str) -> zarr.Array:
    try:
        a = group[name]
    except Exception:
        raise StoreError(f"{where}: array {name} is missing") from None
    if not isinstance(a, zarr.Array):
        raise StoreError(f"{where}: {name} is not an array")
    if tuple(a.shape) != tuple(shape):
        raise StoreError(f"{where}: array {name} has shape {tuple(a.shape)}, manifest says {tuple(shape)}")
    if np.dtype(a.dtype) != np.dtype(dtype):
        raise StoreError(f"{where}: array {name} has dtype {a.dtype}, manifest says {dtype}")
    if a.chunks[0] != m.chunk_rows:
        raise StoreError(f"{where}: array {name} has {a.chunks[0]}-row chunks, manifest says {m.chunk_rows}")
    return a


def _read_samples(path: Path, m: Manifest) -> pa.Table:
    f = path / SAMPLES
    where = str(f)
    if not f.is_file():
        raise StoreError(f"{where}: missing")
    try:
        t = pq.read_table(f)
    except Exception as e:
        raise StoreError(f"{where}: unreadable ({type(e).__name__})") from e
    for col, typ in _SAMPLE_COLUMNS.items():
        if col not in t.column_names:
            raise StoreError(f"{where}: column {col} is missing")
        if t.schema.field(col).type != typ:
            raise StoreError(f"{where}: column {col} has type {t.schema.field(col).type}, expected {typ}")
        if col != "label" and t[col].null_count:
            raise StoreError(f"{where}: column {col} has nulls")
    rows = t["row"].to_numpy()
    n = t["num_rows"].to_numpy()
    order = np.argsort(rows, kind="stable")
    r, c = rows[order], n[order]
    expect = np.concatenate([[0], np.cumsum(c)[:-1]]) if len(c) else c
    if len(r) and not np.array_equal(r, expect):
        i = int(np.flatnonzero(r != expect)[0])
        raise StoreError(f"{where}: row {int(r[i])} (table row {int(order[i])}): rows overlap or leave a gap")
    if int(c.sum()) != m.num_rows:
        raise StoreError(f"{where}: covers {int(c.sum())} rows, manifest says num_rows={m.num_rows}")
    if (c < 1).any():
        raise StoreError(f"{where}: num_rows must be >= 1")
    if m.kind == "classification" and (c != 1).any():
        raise StoreError(f"{where}: classification stores have num_rows == 1 per sample")
    splits = t["split"].to_numpy(zero_copy_only=False)
    ids = t["sample_id"].to_numpy()
    for s, size in m.dataset.split_sizes.items():
        sel = ids[splits == s]
        if len(sel) != size or len(np.unique(sel)) != size:
            raise StoreError(f"{where}: split {s!r} has {len(sel)} rows ({len(np.unique(sel))} distinct sample ids), manifest says {size}")
    return t
