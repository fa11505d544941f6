"""Opening a store for reading: validate cheaply first, then read whole blocks.

`open_store` checks the manifest (schema, version, `complete`, sizes), every declared array (present, dtype,
shape, chunking), the completion markers and `samples.parquet` (its checksum, columns, types, row coverage,
labels) before any target is used. Each block read by training can also be checked (`check_block`): its
bytes against the marker's sha256, ids in range and distinct, finite logits sorted descending,
lse >= max(logit)/tau. Anything wrong is a StoreError naming the array and block or row.

A store may be a local folder or an fsspec URL (location.py): the checks are the same; a remote store's
markers are fetched all at once, and its samples.parquet is read once into memory (hashed and parsed from
the same bytes).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zarr
from zarr.core.sync import sync as zarr_sync

from ..errors import NoStoreError, StoreError
from .format import ATTR, MARKERS, SAMPLES, Manifest, parse_manifest
from .location import FsPath, as_location, redact, zarr_location
from .markers import mismatched, read_all_markers, samples_sha256
from .ids import decode_ids, stray_bits
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
    def __init__(self, path: Path, manifest: Manifest, arrays: dict[str, zarr.Array], samples: "SamplesIndex | None", markers=None):
        self.path = path
        self.markers = markers  # block -> array -> sha256 (complete stores), checked by check_block
        self.manifest = manifest
        self.arrays = arrays  # "topk_logits", "topk_indices", "lse", "features/<name>"
        self.samples = samples  # None while the store is incomplete
        # chunk reads in flight at once (read_blocks): a remote store's requests overlap, up to what its server takes
        self._max_reads = path.max_requests if isinstance(path, FsPath) else 16
        self._slots: asyncio.Semaphore | None = None  # made on zarr's event loop, shared by all read_blocks calls

    @property
    def num_blocks(self) -> int:
        return self.manifest.num_blocks

    def block_rows(self, b: int) -> tuple[int, int]:
        start = b * self.manifest.chunk_rows
        return start, min(start + self.manifest.chunk_rows, self.manifest.num_rows)

    def read_block(self, b: int) -> dict[str, np.ndarray]:
        """All arrays' rows of block b; one chunk read per array, issued concurrently (~0.6 ms each)."""
        return self.read_blocks([b])[b]

    def read_blocks(self, blocks: list[int], names: list[str] | None = None) -> dict[int, dict[str, np.ndarray]]:
        """read_block for several blocks: every chunk read issued together on zarr's event loop (asyncio.gather;
        on a remote store each is a request, so a window's blocks cost about one round trip, not 4 per block).
        names: the arrays to read (None: all); check_block checks the sha256 of those read."""
        keys = [(b, name) for b in blocks for name in (self.arrays if names is None else names)]

        async def one(b: int, name: str):
            if self._slots is None:
                self._slots = asyncio.Semaphore(self._max_reads)
            async with self._slots:
                return await self.arrays[name].async_array.getitem(slice(*self.block_rows(b)))

        async def every():
            return await asyncio.gather(*(one(b, name) for b, name in keys), return_exceptions=True)

        out: dict[int, dict[str, np.ndarray]] = {b: {} for b in blocks}
        for (b, name), got in zip(keys, zarr_sync(every())):
            out[b][name] = got
            if isinstance(got, BaseException):
                e = got
                start, stop = self.block_rows(b)
                msg = redact(str(e).splitlines()[0]) if str(e) else ""
                raise StoreError(f"{self.path}: array {name} block {b} (rows {start}..{stop}): cannot read, truncated or corrupt chunk ({type(e).__name__}: {msg})") from e
        return out

    def check_block(self, b: int, block: dict[str, np.ndarray]) -> None:
        """Cheap per-block checks before training on it; raises StoreError naming array and row."""
        start, stop = self.block_rows(b)
        m = self.manifest
        idx = decode_ids(block, m)
        bad = np.flatnonzero(((idx < 0) | (idx >= m.num_classes)).any(axis=1))
        if bad.size:
            raise StoreError(f"{self.path}: topk_indices row {start + bad[0]}: class id outside [0, {m.num_classes})")
        bad = np.flatnonzero(stray_bits(block, m))
        if bad.size:
            raise StoreError(f"{self.path}: topk_indices row {start + bad[0]}: padding bits after the last packed id are not 0")
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
        for name, ok in (("char_end", lambda a: a >= 0), ("loss_mask", lambda a: a <= 1)):
            bad = np.flatnonzero(~ok(block[name])) if name in block else []
            if len(bad):
                raise StoreError(f"{self.path}: {name} row {start + bad[0]}: {'negative offset' if name == 'char_end' else 'not 0 or 1'}")
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
        pass  # nothing held: zarr's event loop and fsspec's clients are shared by the process


def peek_manifest(path) -> Manifest | None:
    """The manifest of the store at `path` (folder or URL) from its zarr.json alone (no arrays, no table: cheap
    enough for config loading), or None when there is no readable, valid one; open_store reports what is wrong."""
    try:
        return read_manifest(path, allow_incomplete=True)[0]
    except (OSError, ValueError, KeyError, TypeError, StoreError):
        return None


def read_manifest(path, allow_incomplete: bool = False) -> tuple[Manifest, "zarr.Group"]:
    """The store's manifest, validated (schema, version, sizes; `complete` unless allow_incomplete), and its
    zarr group, without reading any array. path: a folder or an fsspec URL (location.py)."""
    path = as_location(path)
    where = str(path)
    try:
        found = (path / "zarr.json").is_file()
        size = (path / "zarr.json").stat().st_size if found else 0
    except Exception as e:  # a remote store that cannot be reached: endpoint, credentials, bucket
        raise StoreError(redact(f"{where}: cannot read the store ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")) from e
    if not found:
        raise NoStoreError(f"{where}: no store here (no zarr.json); run the cache_teacher stage first")
    if size > MAX_ZARR_JSON:
        raise StoreError(f"{where}/zarr.json: larger than {MAX_ZARR_JSON} bytes; not a kd-cache manifest")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr warns about samples.parquet and _markers/
            group = zarr.open_group(zarr_location(path, read_only=True), mode="r", zarr_format=3)
            raw = group.attrs.get(ATTR)
    except Exception as e:
        raise StoreError(redact(f"{where}/zarr.json: unreadable ({type(e).__name__}: {e})")) from e
    m = parse_manifest(raw, where)
    if not m.complete and not allow_incomplete:
        raise StoreError(f"{where}: store is incomplete (complete: false); rerun the cache_teacher stage to finish it")
    return m, group


def open_store(path, allow_incomplete: bool = False) -> CacheStore:
    """A store (folder or fsspec URL), validated as the module docstring says, ready for block reads."""
    path = as_location(path)
    where = str(path)
    m, group = read_manifest(path, allow_incomplete)
    for name in m.array_specs():
        meta = path / name / "zarr.json"
        if meta.is_file() and meta.stat().st_size > MAX_ZARR_JSON:
            raise StoreError(f"{where}: array {name}: zarr.json is larger than {MAX_ZARR_JSON} bytes")
    arrays = {name: _open_array(group, name, shape, dtype, m, where) for name, (shape, dtype) in m.array_specs().items()}
    if not m.complete:
        return CacheStore(path, m, arrays, None)
    markers = read_all_markers(path, m)
    return CacheStore(path, m, arrays, SamplesIndex(path, m), markers)


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


class SamplesIndex:
    """samples.parquet, validated in one streamed pass at open and then read a block's samples at a time.

    The pass checks (without holding the table): its sha256 against _markers/samples.json, the row count in
    the footer, columns and types, rows sorted and covering 0..num_rows-1 exactly once, num_rows >= 1 (for
    classification: the manifest's rows per sample of the split), split names from the manifest, sample ids in 0..split size-1 and distinct per split
    (a bitmap: 1 byte per sample), labels in [0, num_classes) or null. It keeps each row group's row range, so
    `block(start, stop)` reads only the row groups holding samples that start in [start, stop) (a store
    written by kd-pipeline >= 0.2 has one row group per block)."""

    def __init__(self, path: Path, m: Manifest):
        self.path, self.m = path, m
        self.split_codes = {s: i for i, s in enumerate(m.dataset.splits)}
        self.stats = {s: {"samples": 0, "labelled": 0} for s in m.dataset.splits}
        self.groups: list[tuple[int, int]] = []  # per row group: first row, one past its last sample's first row
        # blocks in which some training sample starts (the rest hold only evaluation rows: never streamed)
        self.train_blocks = np.zeros(m.num_blocks, bool)
        self.eval_blocks = np.zeros(m.num_blocks, bool)  # blocks in which some evaluation sample starts
        self._data: bytes | None = None  # a remote table's bytes, read once (hashed and parsed from the same)
        self.eval_split = m.dataset.eval_split
        self._cache: dict[int, dict[str, np.ndarray]] = {}
        self._lock = threading.Lock()  # block() is called from several read-ahead threads
        self._reader: pq.ParquetFile | None = None  # for block(), under _lock
        self._split_names = pa.array(m.dataset.splits, pa.string())
        self._validate()

    def _file(self):
        if self._data is not None:
            return pq.ParquetFile(pa.BufferReader(self._data))
        return pq.ParquetFile(str(self.path / SAMPLES))

    def _validate(self) -> None:
        f, m, where = self.path / SAMPLES, self.m, str(self.path / SAMPLES)
        if not f.is_file():
            raise StoreError(f"{where}: missing")
        limit = 4096 * m.num_rows + (64 << 20)  # bytes; ~20 per row is typical
        if f.stat().st_size > limit:
            raise StoreError(f"{where}: {f.stat().st_size:,} bytes is too large for {m.num_rows:,} rows (limit {limit:,})")
        h = hashlib.sha256()
        if isinstance(f, FsPath):
            self._data = f.read_bytes()
            if len(self._data) > limit:
                raise StoreError(f"{where}: {len(self._data):,} bytes is too large for {m.num_rows:,} rows (limit {limit:,})")
            h.update(self._data)
        else:
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        if h.hexdigest() != samples_sha256(self.path):
            raise StoreError(f"{where}: bytes do not match the sha256 in _markers/samples.json (corrupt or replaced)")
        try:
            reader = self._file()
            n_samples = sum(m.dataset.split_sizes.values())  # = num_rows for classification stores
            if reader.metadata.num_rows != n_samples:  # checked before reading any column
                says = f"num_rows={m.num_rows}" if m.kind == "classification" and m.views is None else f"{n_samples} samples"
                raise StoreError(f"{where}: has {reader.metadata.num_rows} rows, manifest says {says}")
            schema = reader.schema_arrow
            for col, typ in _SAMPLE_COLUMNS.items():
                if col not in schema.names:
                    raise StoreError(f"{where}: column {col} is missing")
                if schema.field(col).type != typ:
                    raise StoreError(f"{where}: column {col} has type {schema.field(col).type}, expected {typ}")
            seen = {s: np.zeros(n, bool) for s, n in m.dataset.split_sizes.items()}
            expect, table_row = 0, 0
            for g in range(reader.num_row_groups):
                t = reader.read_row_group(g, columns=list(_SAMPLE_COLUMNS))
                expect = self._check_group(t, g, expect, table_row, seen, where)
                table_row += t.num_rows
        except StoreError:
            raise
        except Exception as e:
            raise StoreError(f"{where}: unreadable ({type(e).__name__})") from e
        if expect != m.num_rows:
            raise StoreError(f"{where}: covers {expect} rows, manifest says num_rows={m.num_rows}")
        for s, bits in seen.items():
            if not bits.all():
                raise StoreError(f"{where}: split {s!r} has {int(bits.sum())} distinct sample ids, manifest says {len(bits)}")

    def _check_group(self, t: pa.Table, g: int, expect: int, table_row: int, seen: dict, where: str) -> int:
        m = self.m
        for col in _SAMPLE_COLUMNS:
            if col != "label" and t[col].null_count:
                raise StoreError(f"{where}: column {col} has nulls")
        rows, n = t["row"].to_numpy(), t["num_rows"].to_numpy()
        if (n < 1).any():
            raise StoreError(f"{where}: num_rows must be >= 1")
        splits = t["split"].to_numpy(zero_copy_only=False)
        if m.kind == "classification":
            want_n = np.array([m.rows_per_sample(s) for s in splits], np.int64)
            if (n != want_n).any():
                i = int(np.flatnonzero(n != want_n)[0])
                raise StoreError(f"{where}: table row {table_row + i}: num_rows {int(n[i])}, the manifest's rows per sample of split {_short(splits[i])} is {int(want_n[i])}")
        want = expect + np.concatenate([[0], np.cumsum(n)[:-1]]) if len(n) else n
        if len(rows) and not np.array_equal(rows, want):
            i = int(np.flatnonzero(rows != want)[0])
            raise StoreError(f"{where}: row {int(rows[i])} (table row {table_row + i}): rows are not sorted, or overlap or leave a gap")
        lab = t["label"].fill_null(0).to_numpy()
        bad = np.flatnonzero((lab < 0) | (lab >= m.num_classes))
        if bad.size:
            raise StoreError(f"{where}: table row {table_row + int(bad[0])}: label {int(lab[bad[0]])} outside [0, {m.num_classes})")
        ids = t["sample_id"].to_numpy()
        has_label = ~np.asarray(t["label"].is_null())
        for s in np.unique(splits):
            if s not in seen:
                raise StoreError(f"{where}: split {_short(s)} is not one of the manifest's splits {m.dataset.splits}")
            sel = splits == s
            sid = ids[sel]
            if ((sid < 0) | (sid >= len(seen[s]))).any() or seen[s][sid].any() or len(np.unique(sid)) != len(sid):
                raise StoreError(f"{where}: split {s!r}: a sample id is outside 0..{len(seen[s]) - 1} or appears twice")
            seen[s][sid] = True
            self.stats[s]["samples"] += len(sid)
            self.stats[s]["labelled"] += int(has_label[sel].sum())
            (self.train_blocks if s != self.eval_split else self.eval_blocks)[rows[sel] // m.chunk_rows] = True
        if len(rows):
            self.groups.append((int(rows[0]), int(rows[-1]) + 1))
        else:
            self.groups.append((expect, expect))
        return expect + int(n.sum())

    def block(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """The samples whose first row is in [start, stop), in row order: split (index into the manifest's
        splits), sample_id, row, num_rows, label (-1 = null), as numpy arrays."""
        with self._lock:
            return self._block(start, stop)

    def _block(self, start: int, stop: int) -> dict[str, np.ndarray]:
        parts = []
        for g, (lo, hi) in enumerate(self.groups):
            if hi > start and lo < stop:
                if g not in self._cache:
                    if len(self._cache) >= 4:
                        self._cache.pop(next(iter(self._cache)))
                    if self._reader is None:  # opened once: its footer is parsed once, not per row group
                        self._reader = self._file()
                    t = self._reader.read_row_group(g, columns=list(_SAMPLE_COLUMNS), use_threads=False)
                    self._cache[g] = {  # split names -> their index in the manifest's splits (all known: validated)
                        "split": pc.index_in(t["split"], value_set=self._split_names).to_numpy().astype(np.int64),
                        "sample_id": t["sample_id"].to_numpy(), "row": t["row"].to_numpy(),
                        "num_rows": t["num_rows"].to_numpy(), "label": t["label"].fill_null(-1).to_numpy(),
                    }
                a = self._cache[g]
                sel = (a["row"] >= start) & (a["row"] < stop)
                parts.append({k: v[sel] for k, v in a.items()})
        if not parts:
            return {k: np.zeros(0, np.int64) for k in ("split", "sample_id", "row", "num_rows", "label")}
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def block_table(self, start: int, stop: int) -> pa.Table:
        """`block(start, stop)` as samples.parquet rows (to copy them into another store)."""
        a = self.block(start, stop)
        lab = a["label"]
        return pa.table({"sample_id": pa.array(a["sample_id"], pa.int64()),
                         "split": pa.array([self.m.dataset.splits[i] for i in a["split"].tolist()], pa.string()),
                         "row": pa.array(a["row"], pa.int64()), "num_rows": pa.array(a["num_rows"], pa.int64()),
                         "label": pa.array(lab, pa.int64(), mask=lab < 0)})

    def table(self) -> pa.Table:
        """The whole table (tools and tests on small stores; training reads `block`)."""
        return self._file().read()


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def remote_digest(path: FsPath) -> str | None:
    """Content identity of a remote store without downloading it: its zarr.json and every completion marker
    (which hold the sha256 of each block and of samples.parquet), fetched together. None if there is no store."""
    top = path.read_many(["zarr.json"])[0]
    if top is None:
        return None
    try:
        raw = json.loads(top)["attributes"][ATTR]
        n = -(-int(raw["num_rows"]) // int(raw["chunk_rows"]))
        assert 0 <= n <= 1 << 22  # a hostile manifest does not make us list a billion names
    except Exception:
        return hashlib.sha256(top).hexdigest()  # not a kd-cache manifest: its bytes are its identity
    names = [f"block-{b:08d}.json" for b in range(n)] + ["samples.json"]
    h = hashlib.sha256(b"zarr.json" + hashlib.sha256(top).digest())
    for name, data in zip(names, (path / MARKERS).read_many(names)):
        h.update(name.encode() + (hashlib.sha256(data).digest() if data is not None else b"-"))
    return h.hexdigest()
