"""Sync points: which marked blocks a writer resuming a local store may trust without reading them again.

Blocks are not fsynced one by one (docs/integrity.md, "What is synced when"): after a power loss a marker may be
on disk while its block's bytes are not, so a resuming writer checks marked blocks against their sha256. To bound
that check, the writer makes a *sync point* every SYNC_EVERY_S seconds: it fsyncs the files of the blocks written
since the last one (chunks, samples part, marker, the folders naming them), then rewrites its shard's record
`_markers/synced-<shard>.json` durably (temp file, fsync, rename, fsync of the folder) to list those blocks and
every block it knew durable before. A resuming writer trusts the blocks a record lists whose marker is present,
and checks only the other marked blocks: those of the last SYNC_EVERY_S seconds before the machine went down.

A record is {"step": n, "ranges": [[start, stop], ...]}: the blocks range(start, stop, step) of each range, ranges
sorted and disjoint (shard i of n writes i, i+n, i+2n, ...: blocks written in order make one range). Records are
untrusted input like every store file (size cap, schema, ids in [0, num_blocks)): one that fails is treated as
absent, and its blocks are checked.

Why a listed block can be trusted: its marker and bytes were fsynced before the record naming it was renamed
into place, and it has not been written since. A block is written again only once its marker is gone (removed
by hand to repair it, or dropped on resume, which never drops a listed block), so a writer opening the store
first removes its pending blocks from every record listing them, durably, before it writes any block.
`finalize` fsyncs every block, sets `complete: true`, then removes the records. Object stores keep none: a PUT
that returned is durable, and their writer checks nothing on resume.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

from ..errors import StoreError
from .files import atomic_write, sync_all
from .format import MARKERS
from .markers import parse_json

SYNC_EVERY_S = 30.0  # between sync points; the kernel writes dirty pages back after 30 s anyway (dirty_expire_centisecs)
MAX_RECORD_BYTES = 16 << 20  # a record of a store with a million blocks and no holes is ~40 bytes
RECORDS = "synced-*.json"


def record_path(store: Path, shard: int) -> Path:
    return store / MARKERS / f"synced-{shard}.json"


def _int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_record(p: Path, data: bytes, num_blocks: int) -> tuple[int, set[int]]:
    """-> (step, the block ids the record lists); StoreError naming the file if it is not a valid record."""
    d = parse_json(p, data, "sync record", MAX_RECORD_BYTES)
    step, ranges = d.get("step"), d.get("ranges")
    if not (_int(step) and step >= 1 and isinstance(ranges, list)):
        raise StoreError(f'{p}: sync record must be {{"step": n >= 1, "ranges": [[start, stop], ...]}}')
    blocks: set[int] = set()
    prev = 0
    for r in ranges:  # sorted and disjoint, so the ids expanded are at most num_blocks
        if not (isinstance(r, list) and len(r) == 2 and all(map(_int, r)) and prev <= r[0] < r[1] <= num_blocks):
            raise StoreError(f"{p}: sync record range {r!r} is not [start, stop] within 0..{num_blocks}, after {prev}")
        blocks.update(range(r[0], r[1], step))
        prev = r[1]
    return step, blocks


def read_records(store: Path, num_blocks: int) -> dict[Path, tuple[int, set[int]]]:
    """Every valid record of the store: path -> (step, blocks). An invalid or unreadable one is left out."""
    out = {}
    for p in sorted((store / MARKERS).glob(RECORDS)):
        try:
            if not p.is_file():  # never open a FIFO or a device someone named like a record
                continue
            with open(p, "rb") as f:
                out[p] = parse_record(p, f.read(MAX_RECORD_BYTES + 1), num_blocks)
        except (StoreError, OSError):
            continue  # treated as absent: the blocks it lists are checked
    return out


def to_ranges(blocks: Iterable[int], step: int) -> list[list[int]]:
    """Sorted block ids -> [[start, stop], ...] with each range(start, stop, step) a run of them."""
    ranges: list[list[int]] = []
    for b in sorted(blocks):
        if ranges and b == ranges[-1][1] - 1 + step:
            ranges[-1][1] = b + 1
        else:
            ranges.append([b, b + 1])
    return ranges


def write_record(path: Path, blocks: Iterable[int], step: int) -> None:
    atomic_write(path, json.dumps({"step": step, "ranges": to_ranges(blocks, step)}).encode())  # durable


def trusted_blocks(store: Path, num_blocks: int, share: set[int], marked: set[int]) -> set[int]:
    """Blocks of this writer's `share` whose marker is present (`marked`) and that a valid record lists. First,
    every record listing a block of the share whose marker is absent is rewritten without it, durably: this writer
    is about to write that block again, and its new bytes will not be synced when its marker is."""
    listed: set[int] = set()
    for p, (step, blocks) in read_records(store, num_blocks).items():
        stale = (blocks & share) - marked
        if stale:
            write_record(p, blocks - stale, step)
        listed |= blocks
    return listed & share & marked


def remove_records(store: Path) -> None:
    """Once the store is complete (every block fsynced, never checked again on resume)."""
    for p in (store / MARKERS).glob(RECORDS):
        p.unlink(missing_ok=True)


class SyncPoints:
    """One writer's sync points (local stores only). The writer calls `written(b)` once block b's marker is in
    place; every SYNC_EVERY_S seconds the blocks written since the last sync point are fsynced and recorded in a
    background thread (the writer thread goes on writing; one sync point in flight at a time), and the next
    `written`, `wait` or `close` raises its OSError, if any. files(blocks) -> the files to fsync for those blocks.
    durable: blocks already known durable (listed by a record at resume); unsynced: marked blocks that are not
    (checked at resume: right in the page cache, maybe not on disk), synced at the first sync point."""

    def __init__(self, store: Path, shard: int, num_shards: int, files: Callable[[list[int]], list[Path]],
                 durable: Iterable[int] = (), unsynced: Iterable[int] = ()):
        self.store, self.step, self.files = store, num_shards, files
        self.record = record_path(store, shard)
        self.durable = set(durable)  # what this shard's record lists once the sync point in flight is done
        self.unsynced = list(unsynced)
        self.last = time.monotonic()
        self.pool: ThreadPoolExecutor | None = None
        self.inflight: Future | None = None

    def written(self, b: int) -> None:
        self.unsynced.append(b)
        if time.monotonic() - self.last >= SYNC_EVERY_S:
            self.start()

    def start(self) -> None:
        self.wait()  # the previous one first: records are rewritten in order
        blocks, self.unsynced, self.last = self.unsynced, [], time.monotonic()
        if self.pool is None:
            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kd-sync-point")
        self.inflight = self.pool.submit(self._sync, blocks)

    def _sync(self, blocks: list[int]) -> None:
        sync_all(self.files(blocks), self.store)  # the blocks' bytes and markers, then the folders naming them,
        self.durable.update(blocks)
        write_record(self.record, self.durable, self.step)  # then (only then) the record that says so

    def wait(self) -> None:
        f, self.inflight = self.inflight, None
        if f is not None:
            f.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self.pool is not None:
                self.pool.shutdown()
                self.pool = None
