"""A store location that cannot be written (permission denied, disk full): one clear line, and the blocks
already written stay for the next run to resume from."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from kd_pipeline.store import CacheWriter, open_store
from kd_pipeline.errors import StoreError
from tests.test_store import blocks_for, manifest, write_store

NOBODY = 65534


@contextmanager
def writes_denied(path: Path):
    """Really deny writes under `path`. Tests run as root, whom chmod does not stop: then drop the
    effective uid to nobody for the duration (root can take it back: the saved uid stays 0)."""
    if os.geteuid() == 0:
        os.setegid(NOBODY)
        os.seteuid(NOBODY)
        try:
            yield
        finally:
            os.seteuid(0)
            os.setegid(0)
    else:
        modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")] if p.is_dir()}
        for p in modes:
            p.chmod(0o555)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)


@pytest.fixture
def shared_dir():
    """A folder others may read but not write (pytest's tmp folders are private to root)."""
    d = Path(tempfile.mkdtemp(prefix="kd-perm-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


def test_permission_denied_is_one_line_and_the_store_resumes(shared_dir):
    m = manifest(num_rows=1000)
    logits = torch.randn(1000, 10)
    p = shared_dir / "s"
    write_store(p, m, logits, only={0, 1})  # a partial store, as left by an earlier run
    for lock in ("_lock.json", "_lock.create"):
        (p / lock).chmod(0o666)  # so the locks are not what fails: the block writes are
    blocks = blocks_for(m, logits)
    with writes_denied(p):
        probe = p / "probe"
        try:
            probe.touch()
        except PermissionError:
            pass
        else:
            probe.unlink()
            pytest.skip("cannot deny writes here (not root and chmod ignored)")
        w = CacheWriter.open(p, m)
        with pytest.raises(StoreError) as e:
            w.write_block(2, blocks[2])
        w.close()
        with pytest.raises(StoreError, match=r"cannot create the store folder \(Permission denied\)"):
            CacheWriter.open(shared_dir / "new" / "s", m)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{p}: cannot write block 2 (rows 512..768) (Permission denied); finished blocks are kept")
    assert "rerun the cache_teacher stage to resume" in msg
    write_store(p, m, logits)  # write access back: resumes
    with CacheWriter.open(p, m) as w:
        assert w.pending_blocks() == []
    store = open_store(p)
    for b, arrays in blocks.items():
        got = store.read_block(b)
        store.check_block(b, got)
        assert all(np.array_equal(got[k], a) for k, a in arrays.items())
    store.close()


@pytest.fixture
def small_tmpfs():
    d = Path(tempfile.mkdtemp(prefix="kd-full-"))
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        d.rmdir()
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.decode().strip() or r.returncode})")
    yield d
    subprocess.run(["umount", str(d)], check=True)
    d.rmdir()


def test_disk_full_is_one_line_and_the_store_resumes(small_tmpfs):
    # 1000 rows x (64 float32 feature + targets) ~ 290 KB: does not fit in 256 KB
    feats = {"big": {"shape": [64], "dtype": "float32", "module": "body"}}
    m = manifest(num_rows=1000, features=feats)
    logits, f = torch.randn(1000, 10), torch.randn(1000, 64)
    p = small_tmpfs / "s"
    with pytest.raises(StoreError) as e:
        write_store(p, m, logits, f)
    msg = str(e.value)
    assert "\n" not in msg and "(No space left on device); finished blocks are kept" in msg, msg
    with CacheWriter.open(p, m) as w:
        done = m.num_blocks - len(w.pending_blocks())
    assert done >= 1  # blocks written before the disk filled are kept
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_tmpfs)], check=True)
    expect = write_store(p, m, logits, f)  # space freed: resumes and finishes
    store = open_store(p)
    for b, arrays in expect.items():
        got = store.read_block(b)
        store.check_block(b, got)
        assert all(np.array_equal(got[k], a) for k, a in arrays.items())
    store.close()
