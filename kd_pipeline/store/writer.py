"""Writing a store: whole blocks (= one chunk of every array), each followed by a completion marker.

Why blocks: unaligned writes into a chunk rewrite the whole chunk (26-276x slower) and concurrent writers of
one chunk lose rows; whole-chunk writes from several processes are safe. So the unit of work, of resume and
of sharding is the block: process `shard` of `num_shards` writes blocks b with b % num_shards == shard.

Lifecycle: `CacheWriter.open(path, manifest, owner=...)` creates the store, or resumes one whose manifest
identity matches (a different one is replaced: its parameters are stale). With an `owner` (the run folder,
kd_pipeline/ownership.py) it touches an existing store only if that owner created it: any other store, complete
or not, is refused before anything is written, locks included; `pending_blocks()` lists blocks without a
marker; `write_block(b, arrays, samples)` writes the block's chunks and the table rows of the samples that
start in it (`_markers/samples-<b>.parquet`), then marks; `finalize()` checks every marker, writes
`samples.parquet` from those parts (one row group per block, in row order: readers fetch a block's samples
without the whole table) and only then sets `complete: true`.

Crash safety (docs/integrity.md, "What is synced when"): the writer holds `_lock.json` (store/lock.py) from
`open` until `finalize` or `close` (use it as a context manager); a block's marker is renamed into place after
its chunks and samples part are written, so for a killed writer a marker always means the block's bytes are
there. Blocks are not fsynced one by one (that cost more than a small teacher's forward): a power loss may
lose recent blocks, or leave a marker whose bytes did not reach the disk. Every SYNC_EVERY_S seconds a sync
point (synced.py) fsyncs the blocks written since the last one and records them in `_markers/synced-<shard>.json`;
a writer resuming an incomplete store checks the marked blocks of its share that no record lists against their
markers' sha256 and recomputes those that do not match; `finalize` fsyncs every block's files before
samples.parquet and `complete: true`, then removes the records. A killed writer's
temp files are removed on resume; an OSError (permission, disk full) becomes a one-line StoreError and leaves
every marked block in place for the next run. `path` may be an object-store URL (location.py): the same order
of writes, with PUTs of whole objects (durable once returned) instead of rename.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from ..crashpoints import pause_point
from ..errors import StoreError
from zarr.core.sync import sync as zarr_sync

from .files import SAMPLES_MARKER, atomic_write, chunk_files, clear_for_create, fsync_file, remove_partials, sync_all, write_manifest
from .format import ATTR, MARKERS, SAMPLES, VERSION, Manifest, parse_manifest
from .location import FsPath, as_location, zarr_location
from .lock import StoreLock, creating
from .markers import block_sha256, marker_path, read_marker
from .samples_parts import SAMPLES_SCHEMA, parquet_bytes, samples_part_path
from .synced import SyncPoints, remove_records, trusted_blocks


def _os_error(path: Path, what: str, e: OSError) -> StoreError:
    return StoreError(
        f"{path}: cannot {what} ({e.strerror or type(e).__name__}); finished blocks are kept: "
        f"fix this and rerun the cache_teacher stage to resume"
    )


class CacheWriter:
    def __init__(self, path: Path, manifest: Manifest, group: zarr.Group, shard: int = 0, num_shards: int = 1):
        self.path = path
        self.shard, self.num_shards = shard, num_shards
        self.manifest = manifest
        self.group = group
        self.specs = manifest.array_specs()
        # write_empty_chunks: zarr would compare every chunk with the fill value to skip all-zero ones (a pass over
        # each block for a file that readers treat the same either way)
        self.arrays = {name: group[name].with_config({"write_empty_chunks": True}) for name in self.specs}
        self.lock: StoreLock | None = None
        self.dropped: list[int] = []  # marked blocks that failed their check when this writer resumed the store
        # a local store's blocks are fsynced and recorded every SYNC_EVERY_S seconds (synced.py): what a resume trusts
        self.syncs = None if isinstance(path, FsPath) else SyncPoints(path, shard, num_shards, self.block_files)

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close(quiet=exc[0] is not None)

    def close(self, quiet: bool = False) -> None:
        """Waits for the sync point in flight, then releases the writer lock (a killed process releases it too: the
        kernel drops its flock). quiet: a failed sync point is not raised (an error is already on its way); its
        blocks are then merely checked on resume."""
        try:
            self.wait_for_sync_point(close=True)
        except StoreError:
            if not quiet:
                raise
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None

    def wait_for_sync_point(self, close: bool = False) -> None:
        """Returns once the sync point in flight (if any) has written its record; close: and ends its thread. Every
        torchrun shard waits at the end of its pass, before rank 0 finalizes: a record written after finalize removed
        the records would stay in the complete store."""
        if self.syncs is not None:
            try:
                (self.syncs.close if close else self.syncs.wait)()
            except OSError as e:
                raise _os_error(self.path, "sync the blocks written", e) from e

    # ------------------------------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path, manifest: Manifest, create: bool = True, shard: int = 0, num_shards: int = 1, owner=None) -> "CacheWriter":
        """Resume the store at `path` if its manifest identity matches, else (re)create it. Holds the lock.
        owner: who may touch an existing store (`owns(path, manifest)`, `record(path, manifest)`,
        `refusal(path, existing, wanted)`); None = anyone (tools and tests writing their own folders)."""
        path = as_location(path)
        if isinstance(path, FsPath):
            path._writable()  # http(s): refused before anything
        # pyarrow imports pandas (~0.2 s here) on its first array conversion: paid now, not inside the first
        # block's write, which the teacher pass waits for (and bench/processes.py times)
        pa.array(np.zeros(1, np.int64))
        _check_owner(path, _read_manifest(path), manifest, owner)  # before the locks: they are writes too
        with creating(path):  # one opener at a time: shards started together never refuse each other
            lock = StoreLock.acquire(path, shard, num_shards)
            try:
                writer = cls._open_locked(path, manifest, create, lock, owner, shard, num_shards)
            except OSError as e:
                lock.release()
                raise _os_error(path, "open the store for writing", e) from e
            except BaseException:
                lock.release()
                raise
        writer.lock = lock
        return writer

    @classmethod
    def _open_locked(cls, path: Path, manifest: Manifest, create: bool, lock: StoreLock, owner=None,
                     shard: int = 0, num_shards: int = 1) -> "CacheWriter":
        existing = _read_manifest(path)
        _check_owner(path, existing, manifest, owner)  # again, under the lock: another writer may have come first
        if existing is not None and existing.identity() == manifest.identity():
            if lock.exclusive:  # never under a running shard's feet: its temp files are in flight
                remove_partials(path)
            group = zarr.open_group(zarr_location(path, read_only=False), mode="r+", zarr_format=3)
            writer = cls(path, existing, group, shard, num_shards)
            if not existing.complete:
                writer.dropped = writer.drop_unsound_markers()
            return writer
        if not create:
            raise StoreError(f"{path}: no store with matching parameters to resume")
        _refuse_newer(path)
        lock.make_exclusive("replace the store")
        clear_for_create(path)
        if owner is not None:  # once the old store is gone, before the new one exists: ours from here on
            owner.record(path, manifest)
        writer = cls._create(path, manifest, shard, num_shards)
        lock.share()
        return writer

    @classmethod
    def _create(cls, path: Path, manifest: Manifest, shard: int = 0, num_shards: int = 1) -> "CacheWriter":
        m = manifest.model_copy(update={"complete": False})
        group = zarr.open_group(zarr_location(path, read_only=False), mode="a", zarr_format=3)  # folder emptied above; "w" would delete _lock.json
        for name, (shape, dtype) in m.array_specs().items():
            chunks = (m.chunk_rows, *shape[1:])
            group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, compressors=None, fill_value=0)
        (path / MARKERS).mkdir(exist_ok=True)
        write_manifest(path, m.model_dump(mode="json"))  # written last: a store without it is not a store
        pause_point("store_created")
        return cls(path, m, group, shard, num_shards)

    # ------------------------------------------------------------------------------------------- blocks
    def block_rows(self, b: int) -> tuple[int, int]:
        start = b * self.manifest.chunk_rows
        return start, min(start + self.manifest.chunk_rows, self.manifest.num_rows)

    def marker_path(self, b: int) -> Path:
        return marker_path(self.path, b)

    def pending_blocks(self, shard: int = 0, num_shards: int = 1) -> list[int]:
        try:
            done = {p.name for p in (self.path / MARKERS).iterdir()}  # one listing (one request on an object store)
        except FileNotFoundError:
            done = set()
        return [
            b
            for b in range(shard, self.manifest.num_blocks, num_shards)
            if self.marker_path(b).name not in done
        ]

    def write_block(self, b: int, arrays: dict[str, np.ndarray], samples: pa.Table | None = None) -> None:
        """arrays: name -> the block's rows, each exactly (stop - start, ...) with the declared dtype.
        samples: the samples.parquet rows of the samples whose first row is in this block (see samples_parts.samples_table)."""
        start, stop = self.block_rows(b)
        if set(arrays) != set(self.specs):
            raise ValueError(f"block {b}: arrays {sorted(arrays)} != declared {sorted(self.specs)}")
        for name, a in arrays.items():
            shape, dtype = self.specs[name]
            if a.shape != (stop - start, *shape[1:]) or a.dtype != np.dtype(dtype):
                raise ValueError(f"block {b}: {name} has {a.shape} {a.dtype}, expected {(stop - start, *shape[1:])} {dtype}")
        async def put() -> None:  # every chunk in one trip to zarr's event loop, in array order (crash tests)
            for name, a in arrays.items():
                await self.arrays[name].async_array.setitem(slice(start, stop), a)
                pause_point(f"block_array:{b}:{name}")

        try:
            zarr_sync(put())
            marker = {"block": b, "rows": [start, stop], "sha256": {name: block_sha256(a) for name, a in arrays.items()}}
            if samples is not None:
                data = parquet_bytes(samples)
                atomic_write(samples_part_path(self.path, b), data, durable=False)
                marker["samples_sha256"] = hashlib.sha256(data).hexdigest()
            pause_point(f"block_chunks:{b}")
            # not fsynced: a killed writer needs no fsync (the renames are atomic); for a power loss the next sync
            # point makes it durable, a resume checks it until then (drop_unsound_markers), finalize syncs every block
            atomic_write(self.marker_path(b), json.dumps(marker, sort_keys=True).encode(), pause=f"marker_tmp:{b}", durable=False)
            if self.syncs is not None:
                self.syncs.written(b)
        except OSError as e:
            raise _os_error(self.path, f"write block {b} (rows {start}..{stop})", e) from e

    # ----------------------------------------------------------------------------------------- finalize
    def finalize(self, table: pa.Table | None = None) -> Manifest:
        """Writes samples.parquet (from the blocks' parts, or `table` when the caller holds the whole table:
        small stores made by tests and tools) and marks the store complete. A complete store is left as it is."""
        if self.manifest.complete:  # e.g. blocks rewritten after their markers were deleted (repair)
            self.wait_for_sync_point(close=True)
            try:
                self.sync_blocks()
                if self.syncs is not None:
                    remove_records(self.path)  # those of the blocks just rewritten
            except OSError as e:
                raise _os_error(self.path, "finalize the store", e) from e
            for b in range(self.manifest.num_blocks):
                samples_part_path(self.path, b).unlink(missing_ok=True)  # samples.parquet already holds them
            self.close()
            return self.manifest
        missing = self.pending_blocks()
        if missing:
            raise StoreError(f"{self.path}: cannot finalize, {len(missing)} blocks unwritten (first: {missing[0]})")
        done = self.manifest.model_copy(update={"complete": True})
        self.wait_for_sync_point(close=True)  # no sync point in flight: it would rewrite a record after they are removed below
        try:
            self.sync_blocks()  # every block durable before anything that says the store is complete
            if table is not None:
                data = parquet_bytes(table)
                atomic_write(self.path / SAMPLES, data)
                sha = hashlib.sha256(data).hexdigest()
            else:
                sha = self._assemble_samples()
            atomic_write(self.path / MARKERS / SAMPLES_MARKER, json.dumps({"sha256": sha}).encode())
            pause_point("samples_written")
            write_manifest(self.path, done.model_dump(mode="json"), pause="manifest_tmp")
            if self.syncs is not None:
                remove_records(self.path)  # a complete store is never checked on resume; finalize synced every block
        except OSError as e:
            raise _os_error(self.path, "finalize the store", e) from e
        self.manifest = done
        for b in range(self.manifest.num_blocks):  # folded into samples.parquet: no longer needed
            samples_part_path(self.path, b).unlink(missing_ok=True)
        self.close()  # finished: nothing more to write, so another writer may open it
        return self.manifest

    def sync_blocks(self) -> None:
        """fsync every block's chunk files and marker (and the folders naming them, and each array's metadata):
        after this, a power loss cannot take back a block. Cheap when the kernel has written them back already."""
        sync_all(self.block_files(range(self.manifest.num_blocks), parts=False), self.path)

    def block_files(self, blocks, parts: bool = True) -> list[Path]:
        """The files of `blocks`: their markers, chunk files, samples parts (parts; finalize folds them into the
        durable samples.parquet instead) and each array's metadata."""
        files = [self.path / name / "zarr.json" for name in self.specs]
        for b in blocks:
            files.append(self.marker_path(b))
            if parts:
                files.append(samples_part_path(self.path, b))
            for name, (shape, _) in self.specs.items():
                files += chunk_files(self.path, name, b, len(shape))
        return files

    def drop_unsound_markers(self) -> list[int]:
        """Resuming: checks the marked blocks of this writer's share (b % num_shards == shard) that no sync record
        lists (synced.py) against their markers — the marker parses and names the block, each array's bytes and
        the samples part hash to its sha256 — and removes the markers that fail, so those blocks are recomputed.
        After a killed writer all pass (its renames were atomic); after a power loss a marker may have reached the
        disk before its block's bytes (blocks are fsynced at sync points, every SYNC_EVERY_S seconds, not one by
        one). Costs one read + sha256 of the blocks marked since the last sync point. -> blocks dropped.
        Nothing to check on an object store (a PUT that returned is durable)."""
        if self.syncs is None:
            return []
        share = set(range(self.shard, self.manifest.num_blocks, self.num_shards))
        marked = share - set(self.pending_blocks(self.shard, self.num_shards))
        trusted = trusted_blocks(self.path, self.manifest.num_blocks, share, marked)  # fsynced, then recorded
        checked = sorted(marked - trusted)
        dropped = [b for b in checked if not self._block_sound(b)]
        for b in dropped:
            self.marker_path(b).unlink(missing_ok=True)
        self.syncs.durable |= trusted
        self.syncs.unsynced += sorted(set(checked) - set(dropped))  # sound in the page cache; durable at the next sync point
        return dropped

    def _block_sound(self, b: int) -> bool:
        start, stop = self.block_rows(b)
        try:
            sums = read_marker(self.path, self.manifest, b)  # parses, names this block, a sha256 per array
            if any(block_sha256(self.arrays[name][start:stop]) != sums[name] for name in self.specs):
                return False
            want = json.loads(self.marker_path(b).read_bytes()).get("samples_sha256")
            part = samples_part_path(self.path, b)
            return want is None or (part.is_file() and hashlib.sha256(part.read_bytes()).hexdigest() == want)
        except Exception:  # StoreError (marker), OSError, or zarr's error for a truncated chunk file
            return False

    def _assemble_samples(self) -> str:
        """samples.parquet from the blocks' parts, each checked against its marker, one row group per part,
        streamed to a temp file (never the whole table in memory), fsynced and renamed (on an object store:
        a local temp file, uploaded as one object). -> its sha256."""
        if isinstance(self.path, FsPath):
            with tempfile.TemporaryDirectory(prefix="kd-samples-") as d:
                tmp = Path(d) / SAMPLES
                sha = self._write_samples(tmp)
                (self.path / SAMPLES).upload(tmp)
                return sha
        tmp = self.path / f".{SAMPLES}.{os.getpid()}.tmp"
        sha = self._write_samples(tmp)
        fsync_file(tmp)
        os.replace(tmp, self.path / SAMPLES)
        fsync_file(self.path)
        return sha

    def _write_samples(self, tmp: Path) -> str:
        with pq.ParquetWriter(str(tmp), SAMPLES_SCHEMA) as w:
            for b in range(self.manifest.num_blocks):
                part = samples_part_path(self.path, b)
                want = json.loads(self.marker_path(b).read_bytes()).get("samples_sha256")
                data = part.read_bytes() if part.is_file() else None
                if data is None or hashlib.sha256(data).hexdigest() != want:
                    raise StoreError(f"{part}: missing or does not match block {b}'s marker; delete that marker and rerun the cache_teacher stage")
                w.write_table(pq.read_table(pa.BufferReader(data)).cast(SAMPLES_SCHEMA))
        h = hashlib.sha256()
        with open(tmp, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()


def _refuse_newer(path: Path) -> None:
    """A store from a newer version of the format is never deleted to make room for ours."""
    try:
        v = json.loads((path / "zarr.json").read_bytes())["attributes"][ATTR]["version"]
    except Exception:
        return
    if isinstance(v, int) and v > VERSION:
        raise StoreError(f"{path}: holds a store of format version {v} (newer than {VERSION}); will not overwrite it")


def _check_owner(path, existing: Manifest | None, wanted: Manifest, owner) -> None:
    if owner is not None and existing is not None and not owner.owns(path, existing):
        raise StoreError(owner.refusal(path, existing, wanted))


def existing_manifest(path) -> Manifest | None:
    """The manifest of the store at `path` (folder or URL), or None where there is none (or none readable)."""
    return _read_manifest(as_location(path))


def _read_manifest(path: Path) -> Manifest | None:
    if not (path / "zarr.json").exists():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = zarr.open_group(zarr_location(path, read_only=True), mode="r").attrs.get(ATTR)
        return parse_manifest(raw, str(path))
    except Exception:
        return None  # unreadable or foreign: treated as absent, and replaced
