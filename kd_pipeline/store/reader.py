"""Opening a store for reading: validate cheaply first, then read whole blocks.

`open_store` checks the manifest (schema, version, `complete`, sizes), every declared array (present, dtype,
shape, chunking), the completion markers and `samples.parquet` (its checksum, columns, types, row coverage,
labels) before any target is used. Each block read by training can also be checked (`check_block`): its
bytes against the marker's sha256, ids in range and distinct, finite logits sorted descending,
lse >= max(logit)/tau. Anything wrong is a StoreError naming the array and block or row.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from ..errors import StoreError
from .format import ATTR, SAMPLES, Manifest, parse_manifest
from .markers import mismatched, read_all_markers, samples_sha256
from .values import decode_values

MAX_ZARR_JSON = 16 << 20  # bytes; a manifest is a few KB

_SAMPLE_COLUMNS = {
    "sample_id": pa.int64(),
    "split": pa.string(),
    "row": pa.int64(),
    "num_rows": pa.int64(),
    "label": pa.int64(),
}


class CacheStore:
    def __init__(self, path: Path, manifest: Manifest, arrays: dict[str, zarr.Array], samples: pa.Table, markers=None):
        self.path = path
        self.markers = markers  # block -> array -> sha256 (complete stores), checked by check_block
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
        out = {}
        for name, f in futs.items():
            try:
                out[name] = f.result()
            except Exception as e:
                msg = str(e).splitlines()[0] if str(e) else ""
                raise StoreError(f"{self.path}: array {name} block {b} (rows {start}..{stop}): cannot read, truncated or corrupt chunk ({type(e).__name__}: {msg})") from e
        return out

    def check_block(self, b: int, block: dict[str, np.ndarray]) -> None:
        """Cheap per-block checks before training on it; raises StoreError naming array and row."""
        start, stop = self.block_rows(b)
        m = self.manifest
        idx = block["topk_indices"]
        bad = np.flatnonzero(((idx < 0) | (idx >= m.num_classes)).any(axis=1))
        if bad.size:
            raise StoreError(f"{self.path}: topk_indices row {start + bad[0]}: class id outside [0, {m.num_classes})")
        # sampled stores pad rows with count-0 copies of an id: only ids that were drawn must be distinct
        ids = idx if "sample_counts" not in block else np.where(block["sample_counts"] > 0, idx, -1 - np.arange(idx.shape[1]))
        srt = np.sort(ids, axis=1)
        bad = np.flatnonzero((srt[:, 1:] == srt[:, :-1]).any(axis=1))
        if bad.size:
            raise StoreError(f"{self.path}: topk_indices row {start + bad[0]}: the same class id twice")
        vals = decode_values(block, m.values_scheme)
        bad = np.flatnonzero(~np.isfinite(vals).all(axis=1))
        if bad.size:
            raise StoreError(f"{self.path}: topk_logits row {start + bad[0]}: non-finite logit")
        bad = np.flatnonzero((vals[:, 1:] > vals[:, :-1]).any(axis=1))
        if bad.size:
            raise StoreError(f"{self.path}: topk_logits row {start + bad[0]}: not sorted in descending order")
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
        # Last, so a damaged block reports what is wrong in it when that is visible; catches the rest.
        if self.markers is not None:
            bad_sums = mismatched(block, self.markers[b])
            if bad_sums:
                raise StoreError(f"{self.path}: array {bad_sums[0]} block {b} (rows {start}..{stop}): bytes do not match the block's sha256 (corrupt chunk)")

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def peek_manifest(path: str | Path) -> Manifest | None:
    """The manifest of the store at `path` from its zarr.json alone (no arrays, no table: cheap enough for
    config loading), or None when there is no readable, valid one; open_store reports what is wrong."""
    f = Path(path) / "zarr.json"
    try:
        if not f.is_file() or f.stat().st_size > MAX_ZARR_JSON:
            return None
        return parse_manifest(json.loads(f.read_bytes())["attributes"][ATTR], str(path))
    except (OSError, ValueError, KeyError, TypeError, StoreError):
        return None


def open_store(path: str | Path, allow_incomplete: bool = False) -> CacheStore:
    path = Path(path)
    where = str(path)
    if not (path / "zarr.json").is_file():
        raise StoreError(f"{where}: no store here (no zarr.json); run the cache_teacher stage first")
    if (path / "zarr.json").stat().st_size > MAX_ZARR_JSON:
        raise StoreError(f"{where}/zarr.json: larger than {MAX_ZARR_JSON} bytes; not a kd-cache manifest")
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
    for name in m.array_specs():
        meta = path / name / "zarr.json"
        if meta.is_file() and meta.stat().st_size > MAX_ZARR_JSON:
            raise StoreError(f"{where}: array {name}: zarr.json is larger than {MAX_ZARR_JSON} bytes")
    arrays = {name: _open_array(group, name, shape, dtype, m, where) for name, (shape, dtype) in m.array_specs().items()}
    if not m.complete:
        return CacheStore(path, m, arrays, pa.table({k: pa.array([], t) for k, t in _SAMPLE_COLUMNS.items()}))
    markers = read_all_markers(path, m)
    return CacheStore(path, m, arrays, _read_samples(path, m), markers)


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
    if tuple(a.chunks) != (m.chunk_rows, *shape[1:]):
        raise StoreError(f"{where}: array {name} has chunks {tuple(a.chunks)}, manifest says {(m.chunk_rows, *shape[1:])}")
    return a


def _read_samples(path: Path, m: Manifest) -> pa.Table:
    f = path / SAMPLES
    where = str(f)
    if not f.is_file():
        raise StoreError(f"{where}: missing")
    limit = 4096 * m.num_rows + (64 << 20)  # bytes; ~20 per row is typical
    if f.stat().st_size > limit:
        raise StoreError(f"{where}: {f.stat().st_size:,} bytes is too large for {m.num_rows:,} rows (limit {limit:,})")
    data = f.read_bytes()  # one row per sample: small next to the arrays
    if hashlib.sha256(data).hexdigest() != samples_sha256(path):
        raise StoreError(f"{where}: bytes do not match the sha256 in _markers/samples.json (corrupt or replaced)")
    try:
        reader = pq.ParquetFile(pa.BufferReader(data))
        n_samples = sum(m.dataset.split_sizes.values())  # = num_rows for classification stores
        if reader.metadata.num_rows != n_samples:  # checked before reading any column
            says = f"num_rows={m.num_rows}" if m.kind == "classification" else f"{n_samples} samples"
            raise StoreError(f"{where}: has {reader.metadata.num_rows} rows, manifest says {says}")
        t = reader.read()
    except StoreError:
        raise
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
    lab = t["label"].fill_null(0).to_numpy()
    bad = np.flatnonzero((lab < 0) | (lab >= m.num_classes))
    if bad.size:
        raise StoreError(f"{where}: table row {int(bad[0])}: label {int(lab[bad[0]])} outside [0, {m.num_classes})")
    splits = t["split"].to_numpy(zero_copy_only=False)
    ids = t["sample_id"].to_numpy()
    for s, size in m.dataset.split_sizes.items():
        sel = ids[splits == s]
        if len(sel) != size or len(np.unique(sel)) != size:
            raise StoreError(f"{where}: split {s!r} has {len(sel)} rows ({len(np.unique(sel))} distinct sample ids), manifest says {size}")
    return t
