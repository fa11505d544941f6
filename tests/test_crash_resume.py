"""kill -9 the teacher pass at precise moments (crashpoints.py), rerun, and the store equals an uninterrupted
run's bit for bit. Also: the writer lock refuses a second writer by name and is taken over once its holder
is dead."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import zarr

from kd_pipeline.config import load_config
from kd_pipeline.errors import StoreError
from kd_pipeline.runner import run_pipeline
from kd_pipeline.store import CacheWriter, open_store
from kd_pipeline.store.lock import active_holders
from tests.conftest import tiny_config, write_config
from tests.killing import kill9, start_paused

ARRAYS = ("topk_logits", "topk_indices", "lse", "features/penultimate")


def same_store(a: Path, b: Path) -> None:
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    for name in ARRAYS:
        x, y = ga[name][:], gb[name][:]
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), name
    assert (a / "samples.parquet").read_bytes() == (b / "samples.parquet").read_bytes()


@pytest.fixture
def fresh_run(tiny_run, tmp_path) -> Path:
    """A run folder holding only the session's trained teacher: the cache stage starts from nothing."""
    src = load_config(tiny_run).out_dir
    (tmp_path / "run").mkdir()
    shutil.copy(src / "teacher.safetensors", tmp_path / "run" / "teacher.safetensors")
    return write_config(tmp_path / "pipeline.yaml", tiny_config(tmp_path / "run"))


def _chunk(store: Path, name: str, b: int) -> Path:
    return store / name / "c" / str(b) / "0"


STATE_AT_KILL = {
    # point -> check of what the killed writer left behind
    "store_created": lambda s: not list((s / "_markers").glob("block-*.json")),
    "block_array:4:topk_indices": lambda s: _chunk(s, "topk_indices", 4).is_file() and not _chunk(s, "lse", 4).exists(),
    "block_chunks:3": lambda s: _chunk(s, "topk_logits", 3).is_file() and not (s / "_markers" / "block-00000003.json").exists(),
    "marker_tmp:5": lambda s: list((s / "_markers").glob(".block-00000005.json.*.tmp")) and not (s / "_markers" / "block-00000005.json").exists(),
    "samples_written": lambda s: (s / "samples.parquet").is_file(),
    "manifest_tmp": lambda s: list(s.glob(".zarr.json.*.tmp")),
}


def second_writer_refused(cfg, pid: int) -> None:
    """While the paused writer lives: another writer (API or `kd run`) is refused, naming it."""
    m = open_store(cfg.cache_path, allow_incomplete=True).manifest
    with pytest.raises(StoreError) as e:
        CacheWriter.open(cfg.cache_path, m)
    msg = str(e.value)
    assert f"pid {pid} on host {os.uname().nodename}, started 20" in msg and "\n" not in msg
    with pytest.raises(StoreError, match=f"another writer holds the store lock \\(pid {pid} "):
        run_pipeline(cfg, only=["cache_teacher"])
    assert [h["pid"] for h in active_holders(cfg.cache_path)] == [pid]
    from kd_pipeline.store.verify import verify_store

    assert verify_store(cfg.cache_path).notes[0].startswith(f"a writer is active (pid {pid} ")


@pytest.mark.parametrize("point", list(STATE_AT_KILL))
def test_kill9_then_rerun_equals_uninterrupted(point, zygote, tiny_run, fresh_run, tmp_path, capsys):
    reference = load_config(tiny_run).cache_path  # the session's uninterrupted run, same data and teacher
    cfg = load_config(fresh_run)
    store = cfg.cache_path
    pid = start_paused(zygote, fresh_run, point, "cache_teacher", tmp_path)
    if point == "block_chunks:3":
        second_writer_refused(cfg, pid)
    kill9(pid)
    assert STATE_AT_KILL[point](store), f"kill at {point} did not leave the expected state"
    with pytest.raises(StoreError, match="incomplete"):
        open_store(store)  # whatever moment it died at, a killed store is never read as complete
    if point == "block_chunks:3":
        for name in ARRAYS:  # a torn block: its bytes must be rewritten, not trusted, since it has no marker
            _chunk(store, name, 3).write_bytes(b"\xff" * 17)
    assert json.loads((store / "_lock.json").read_text())["pid"] == pid  # the dead writer's lock is left
    assert active_holders(store) == []  # ... but not held: the kernel dropped the dead process's flock
    assert run_pipeline(cfg, only=["cache_teacher"]) == ["cache_teacher"]
    assert f"took over the stale lock of pid {pid}" in capsys.readouterr().out
    same_store(store, reference)
    assert not list(store.rglob("*.partial")) and not list(store.rglob(".*.tmp"))
    st = open_store(store)
    for b in range(st.num_blocks):  # checksums of every block against its marker
        st.check_block(b, st.read_block(b))
    st.close()


def test_a_power_loss_after_the_kill_is_caught_on_resume(zygote, tiny_run, fresh_run, tmp_path, capsys):
    """Blocks are not fsynced one by one: after a power loss a marker may be on disk while its block's bytes are
    not. The rerun's writer checks the marked blocks, recomputes that one, and says so."""
    reference = load_config(tiny_run).cache_path
    cfg = load_config(fresh_run)
    store = cfg.cache_path
    kill9(start_paused(zygote, fresh_run, "block_chunks:3", "cache_teacher", tmp_path))  # blocks 0..2 marked
    _chunk(store, "lse", 1).write_bytes(b"")  # block 1's marker reached the disk, its lse chunk did not
    assert run_pipeline(cfg, only=["cache_teacher"]) == ["cache_teacher"]
    assert "cache_teacher: 1 finished block(s) did not match their markers (first: block 1): recomputing them" in capsys.readouterr().out
    same_store(store, reference)


def test_sharded_writers_share_the_store_but_not_a_shard(tmp_path):
    from tests.test_store import manifest

    m = manifest()
    with CacheWriter.open(tmp_path / "s", m, shard=0, num_shards=2) as w0:
        with CacheWriter.open(tmp_path / "s", m, shard=1, num_shards=2):
            with pytest.raises(StoreError, match="another writer holds the store lock"):
                CacheWriter.open(tmp_path / "s", m, shard=1, num_shards=2)
            with pytest.raises(StoreError, match=r"sharded writers: pid \d+ .*\(shard 0/2\)"):
                CacheWriter.open(tmp_path / "s", m)
        assert w0.pending_blocks(0, 2) == [0, 2]
    with CacheWriter.open(tmp_path / "s", m) as w:
        assert w.lock.exclusive


def test_a_store_killed_while_being_created_is_rebuilt_but_a_foreign_folder_is_not(tmp_path):
    from tests.test_store import manifest

    p = tmp_path / "s"
    p.mkdir()
    zarr.open_group(str(p), mode="w", zarr_format=3)  # zarr.json without a manifest yet
    (p / ".zarr.json.123.tmp").write_text("{")  # our manifest temp file
    (p / "zarr.0badc0de.partial").write_text("{")  # zarr's temp file
    (p / "lse").mkdir()
    with CacheWriter.open(p, manifest()) as w:
        assert w.pending_blocks() == [0, 1, 2, 3]
    assert sorted(x.name for x in p.iterdir()) == ["_lock.create", "_lock.json", "_markers", "lse", "topk_indices", "topk_logits", "zarr.json"]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("not a store")
    with pytest.raises(StoreError, match=r"exists and is not a kd-cache store \(holds \['notes.txt'\]\); choose another cache.path"):
        CacheWriter.open(other, manifest())
    assert (other / "notes.txt").exists()


def test_a_store_of_a_newer_format_is_never_overwritten(tmp_path):
    from kd_pipeline.store.files import write_manifest
    from tests.test_store import manifest, write_store

    import torch

    write_store(tmp_path / "s", manifest(), torch.randn(1000, 10))
    meta = json.loads((tmp_path / "s" / "zarr.json").read_text())["attributes"]["kd_cache"]
    write_manifest(tmp_path / "s", {**meta, "version": 2})
    with pytest.raises(StoreError, match="holds a store of format version 2 \\(newer than 1\\); will not overwrite it"):
        CacheWriter.open(tmp_path / "s", manifest())
    assert (tmp_path / "s" / "samples.parquet").exists()


def test_sharded_writer_clears_a_dead_unsharded_writers_lock_info(tmp_path):
    from tests.test_store import manifest

    m = manifest()
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "_lock.json").write_text(json.dumps({"pid": 999999, "host": "gone", "started_at": "then"}))
    with CacheWriter.open(tmp_path / "s", m, shard=1, num_shards=2) as w:
        assert [o["pid"] for o in w.lock.taken_over] == [999999]
        with pytest.raises(StoreError) as e:
            CacheWriter.open(tmp_path / "s", m)
        assert f"pid {os.getpid()}" in str(e.value) and "(shard 1/2)" in str(e.value) and "999999" not in str(e.value)


def _small_store(num_rows: int = 1000):
    """A manifest of num_rows // 256 + 1 blocks (tests/test_store.py), each block's arrays, the samples table."""
    import numpy as np
    import torch

    from kd_pipeline.store.samples_parts import samples_table
    from tests.test_store import blocks_for, manifest

    m = manifest(num_rows=num_rows)
    sizes = m.dataset.split_sizes
    table = samples_table(sizes, {"train": np.arange(sizes["train"]) % 10, "transfer": np.full(sizes["transfer"], -1)})
    return m, blocks_for(m, torch.randn(num_rows, 10)), table


def _write(path: Path, small, only=None, finalize: bool = False, shard: int = 0, num_shards: int = 1) -> CacheWriter:
    """Opens (creates or resumes) the store, writes its pending blocks of the share (those in `only`), closes."""
    m, blocks, table = small
    with CacheWriter.open(path, m, shard=shard, num_shards=num_shards) as w:
        for b in w.pending_blocks(shard, num_shards):
            if only is None or b in only:
                start, stop = w.block_rows(b)
                w.write_block(b, blocks[b], table.slice(start, stop - start))
        if finalize:
            w.finalize()
    return w


def _same_as_uninterrupted(s: Path, small, tmp_path: Path) -> None:
    import numpy as np

    _write(tmp_path / "full", small, finalize=True)
    st, ref = open_store(s), open_store(tmp_path / "full")
    for b in range(st.num_blocks):
        for name, a in st.read_block(b).items():
            assert np.array_equal(a, ref.read_block(b)[name]), (b, name)
        st.check_block(b, st.read_block(b))
    assert (s / "samples.parquet").read_bytes() == (tmp_path / "full" / "samples.parquet").read_bytes()


def test_resume_recomputes_marked_blocks_whose_bytes_were_lost(tmp_path):
    """Blocks are not fsynced one by one, so a power loss may keep a marker whose block's bytes (or samples part)
    never reached the disk, or a marker file that is empty. A writer resuming the store checks each marked block
    against its marker and recomputes those that fail; what is then finalized equals an uninterrupted store."""
    import numpy as np

    from kd_pipeline.store.samples_parts import samples_part_path

    small = _small_store()
    s = tmp_path / "s"
    _write(s, small)  # as if killed before finalize: every block marked, its samples part there
    assert _write(s, small).dropped == []  # a killed writer's blocks (page cache intact): all kept
    _chunk(s, "lse", 0).write_bytes(b"\0" * 17)  # torn chunk file
    (s / "_markers" / "block-00000001.json").write_bytes(b"")  # the marker's name made it to disk, its bytes not
    ids = zarr.open_array(str(s / "topk_indices"), mode="r+")
    ids[512:768] = np.zeros((256, 3), ids.dtype)  # block 2 stale: the zeros a lost write leaves
    samples_part_path(s, 3).write_bytes(b"x")  # block 3's samples part lost
    m = small[0]
    with CacheWriter.open(s, m, shard=1, num_shards=2) as w:  # a shard checks its own blocks only
        assert w.dropped == [1, 3] and w.pending_blocks(1, 2) == [1, 3]
    with CacheWriter.open(s, m) as w:
        assert w.dropped == [0, 2] and w.pending_blocks() == [0, 1, 2, 3]
    _write(s, small, finalize=True)  # resumes: recomputes 0..3 and finalizes
    _same_as_uninterrupted(s, small, tmp_path)


@pytest.fixture
def checks(monkeypatch) -> list[int]:
    """The blocks that resuming writers read and hash against their markers, in order."""
    seen: list[int] = []
    real = CacheWriter._block_sound
    monkeypatch.setattr(CacheWriter, "_block_sound", lambda self, b: (seen.append(b), real(self, b))[1])
    return seen


@pytest.fixture
def sync_every(monkeypatch):
    """sync_every(s): sync points every s seconds from now on (0: after every block)."""
    import kd_pipeline.store.synced as synced

    return lambda seconds: monkeypatch.setattr(synced, "SYNC_EVERY_S", seconds)


def _record(store: Path, shard: int = 0) -> dict:
    return json.loads((store / "_markers" / f"synced-{shard}.json").read_bytes())


def test_a_resume_reads_only_the_blocks_marked_since_the_last_sync_point(tmp_path, checks, sync_every):
    """A sync point fsyncs the blocks written since the last one, then records them; a resuming writer trusts those
    (marker and bytes were on disk before the record) and reads and hashes only the other marked blocks,
    recomputing those that fail. A block checked on resume joins the next sync point."""
    small = _small_store()
    s = tmp_path / "s"
    sync_every(0)
    _write(s, small, only={0, 1})
    assert _record(s) == {"step": 1, "ranges": [[0, 2]]}
    sync_every(3600)  # blocks 2 and 3 are written, then the power goes before the next sync point:
    _write(s, small, only={2, 3})
    assert _record(s) == {"step": 1, "ranges": [[0, 2]]}
    _chunk(s, "lse", 3).write_bytes(b"\0" * 17)  # block 3's marker reached the disk, its lse chunk did not
    sync_every(0)
    w = _write(s, small)
    assert checks == [2, 3] and w.dropped == [3]
    assert _record(s) == {"step": 1, "ranges": [[0, 4]]}  # block 3 rewritten and synced, block 2 with it
    checks.clear()
    _write(s, small, finalize=True)
    assert checks == []
    assert not list((s / "_markers").glob("synced-*"))  # complete: never checked on resume, the records go
    _same_as_uninterrupted(s, small, tmp_path)


BAD_RECORDS = {
    "not JSON": b'{"step": 1, "ranges": [[0, 4]]',
    "over the size cap": b'{"step": 1, "ranges": [[0, 4]]}' + b" " * (16 << 20),
    "nested too deep": b"[" * 100_000 + b"]" * 100_000,
    "a list": b"[[0, 4]]",
    "ids beyond the store": b'{"step": 1, "ranges": [[0, 5]]}',
    "a negative id": b'{"step": 1, "ranges": [[-1, 4]]}',
    "overlapping ranges": b'{"step": 1, "ranges": [[0, 2], [1, 4]]}',
    "step 0": b'{"step": 0, "ranges": [[0, 4]]}',
    "step true": b'{"step": true, "ranges": [[0, 4]]}',
    "an id that is text": b'{"step": 1, "ranges": [[0, "4"]]}',
}


@pytest.mark.parametrize("bad", list(BAD_RECORDS))
def test_a_bad_sync_record_is_treated_as_absent(bad, tmp_path, checks):
    """Shared stores are untrusted input, the sync records too: one that is not valid (size cap, schema, ids in
    range) lists nothing, so every marked block is checked, and the one whose bytes were lost is recomputed."""
    small = _small_store()
    s = tmp_path / "s"
    _write(s, small)
    (s / "_markers" / "synced-0.json").write_bytes(BAD_RECORDS[bad])
    _chunk(s, "lse", 1).write_bytes(b"")
    w = _write(s, small, finalize=True)
    assert checks == [0, 1, 2, 3] and w.dropped == [1]
    _same_as_uninterrupted(s, small, tmp_path)


def test_a_block_to_be_written_again_is_first_removed_from_the_sync_records(tmp_path, checks, sync_every):
    """A marker deleted by hand (to have its block recomputed) makes the block pending. Its new bytes are not
    synced when its new marker is, so the writer that opens the store removes it from the records, durably,
    before it writes anything; the next resume checks it again."""
    small = _small_store()
    s = tmp_path / "s"
    sync_every(0)
    _write(s, small)
    assert _record(s) == {"step": 1, "ranges": [[0, 4]]}
    (s / "_markers" / "block-00000001.json").unlink()
    sync_every(3600)
    with CacheWriter.open(s, small[0]) as w:
        assert _record(s) == {"step": 1, "ranges": [[0, 1], [2, 4]]} and w.pending_blocks() == [1]
    _write(s, small)
    assert _record(s) == {"step": 1, "ranges": [[0, 1], [2, 4]]}
    assert _write(s, small, finalize=True).dropped == [] and checks == [1]  # rewritten, unsynced: checked
    _same_as_uninterrupted(s, small, tmp_path)


def test_each_shard_keeps_its_own_sync_record(tmp_path, checks, sync_every):
    """torchrun shards (rank r writes blocks b % world == r, each its own writer) each keep a record of their
    blocks; any writer trusts what any record lists (even after the world size changed); finalize removes them."""
    small = _small_store(2000)  # 8 blocks
    s = tmp_path / "s"
    sync_every(0)
    _write(s, small, only={0, 2, 4}, shard=0, num_shards=2)
    _write(s, small, shard=1, num_shards=2)
    assert _record(s, 0) == {"step": 2, "ranges": [[0, 5]]} and _record(s, 1) == {"step": 2, "ranges": [[1, 8]]}
    assert _write(s, small, shard=1, num_shards=2).dropped == [] and checks == []
    w = _write(s, small, finalize=True)  # one writer now: block 6 is its to write, the others are trusted
    assert checks == [] and w.dropped == []
    assert not list((s / "_markers").glob("synced-*"))
    _same_as_uninterrupted(s, small, tmp_path)


def test_finalize_syncs_every_block_before_the_store_says_complete(tmp_path, monkeypatch):
    """What a power loss may not take back once `complete: true` is on disk: every chunk file, marker and the
    folders naming them are fsynced first (per block the writer syncs nothing: docs/integrity.md)."""
    import kd_pipeline.store.files as files
    from kd_pipeline.store.files import chunk_files
    from tests.test_store import manifest, write_store

    import torch

    events = []
    real_fsync, real_write = files.fsync_file, files.atomic_write
    monkeypatch.setattr(files, "fsync_file", lambda p: (events.append(("fsync", p)), real_fsync(p))[1])
    monkeypatch.setattr(files, "atomic_write", lambda p, data, pause=None, durable=True: (
        events.append(("write", p)), real_write(p, data, pause, durable))[1])
    m = manifest(num_rows=1000)
    s = tmp_path / "s"
    write_store(s, m, torch.randn(1000, 10))
    done = max(i for i, (what, p) in enumerate(events) if what == "write" and p == s / "zarr.json")  # complete: true
    synced = {p for what, p in events[:done] if what == "fsync"}
    for b in range(m.num_blocks):
        for name, (shape, _) in m.array_specs().items():
            f = chunk_files(s, name, b, len(shape))[0]
            assert {f, f.parent, s / name / "c", s / name} <= synced, (b, name)
        assert s / "_markers" / f"block-{b:08d}.json" in synced
    assert s / "_markers" in synced


def test_sync_points_during_a_pass_bound_what_a_resume_reads(tiny_run, fresh_run, monkeypatch, checks, sync_every, capsys):
    """The cache stage with a sync point after every block dies at block 5 (its chunks written, not its marker):
    the record lists blocks 0..4 (of 8). Then the machine goes down as if the last sync point had not been made, and
    block 4's lse chunk is lost: the rerun reads and hashes block 4 only, recomputes it, and the store equals an
    uninterrupted run's."""
    import kd_pipeline.store.writer as writer
    from kd_pipeline.store.synced import read_records, write_record

    def die_at(name: str) -> None:
        if name == "block_chunks:5":
            raise RuntimeError("the machine went down")

    reference = load_config(tiny_run).cache_path
    cfg = load_config(fresh_run)
    store = cfg.cache_path
    sync_every(0)
    monkeypatch.setattr(writer, "pause_point", die_at)
    with pytest.raises(RuntimeError, match="the machine went down"):
        run_pipeline(cfg, only=["cache_teacher"])
    (_, listed), = read_records(store, 8).values()  # sync points during the pass:
    assert {0, 1, 2, 3, 4} <= listed and 5 not in listed  # (block 6, queued behind 5, may have been written too)
    write_record(store / "_markers" / "synced-0.json", listed - {4}, 1)
    _chunk(store, "lse", 4).write_bytes(b"")
    monkeypatch.setattr(writer, "pause_point", lambda name: None)
    assert run_pipeline(cfg, only=["cache_teacher"]) == ["cache_teacher"]
    assert checks == [4]
    assert "1 finished block(s) did not match their markers (first: block 4): recomputing them" in capsys.readouterr().out
    same_store(store, reference)
    assert not list((store / "_markers").glob("synced-*"))


def test_a_pass_returns_only_once_its_last_sync_point_is_recorded(fresh_run, monkeypatch, sync_every):
    """Under torchrun every rank's pass ends before rank 0 finalizes (and removes the sync records); a record that a
    rank's sync point wrote after that would stay in the complete store. So the pass waits for it: here the sync
    points are slowed down, and when finalize begins none is in flight."""
    import time

    from kd_pipeline.store.synced import SyncPoints

    cfg = load_config(fresh_run)
    slow, real_sync, real_finalize = [], SyncPoints._sync, CacheWriter.finalize
    monkeypatch.setattr(SyncPoints, "_sync", lambda self, blocks: (time.sleep(0.2), slow.append(blocks), real_sync(self, blocks)))
    monkeypatch.setattr(CacheWriter, "finalize", lambda self, *a: (slow.append(self.syncs.inflight), real_finalize(self, *a))[1])
    sync_every(0)
    assert run_pipeline(cfg, only=["cache_teacher"]) == ["cache_teacher"]
    assert slow[-1] is None and sorted(b for blocks in slow[:-1] for b in blocks) == list(range(8))
    assert not list((cfg.cache_path / "_markers").glob("synced-*"))
