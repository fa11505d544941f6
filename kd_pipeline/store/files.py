"""File-level helpers for writing a store so that a crash at any instant leaves it resumable.

Every file the writer owns (markers, samples.parquet, the manifest in zarr.json) is written to a temp file and
renamed into place: a reader sees the old file or the new one, never half of one, whenever the writer dies
(rename is atomic for a killed process; no fsync is needed for that). zarr writes chunks the same way
(`<chunk>.<uuid>.partial`, then rename); temp files a killed writer leaves are removed when the store is
reopened for writing. fsync only matters for power loss (or a kernel crash): files that must survive one
(samples.parquet, its checksum, the manifest, checkpoints) are written `durable`; a block's files are not, and
are synced all at once when the store is finalized (docs/integrity.md, "What is synced when").

On an object store (`FsPath`, location.py) a PUT of a whole object is what rename is locally: atomic, and
durable once it returns; there is nothing to fsync and no temp file.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..crashpoints import pause_point
from ..errors import StoreError
from .format import ATTR, CORE_ARRAYS, MARKERS, ROW_ARRAYS, SAMPLES
from .location import FsPath

SAMPLES_MARKER = "samples.json"
SYNC_THREADS = 16  # fsyncs in flight at once in sync_all  # _markers/samples.json: sha256 of samples.parquet
# Everything a store folder may hold; anything else means the folder is not ours to delete.
OWN_NAMES = {"zarr.json", SAMPLES, MARKERS, "features", *CORE_ARRAYS, *ROW_ARRAYS}


def fsync_file(path: Path) -> None:
    if isinstance(path, FsPath):
        return  # a PUT that returned is durable
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return  # zarr skips chunks that equal the fill value: nothing to flush
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, pause: str | None = None, durable: bool = True) -> None:
    """Replace `path` by `data` whole (temp file, rename). durable: fsync the temp file before the rename and the
    folder after it, so the new file survives a power loss; without, only a killed process is covered."""
    if isinstance(path, FsPath):
        if pause:
            pause_point(pause)
        path.write_bytes(data)  # one PUT of the whole object: atomic
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())  # the rename below must never expose a file whose bytes are not on disk
    if pause:
        pause_point(pause)
    os.replace(tmp, path)
    if durable:
        fsync_file(path.parent)  # the rename itself, for power loss (a kill -9 needs none of these fsyncs)


def write_manifest(path: Path, manifest: dict, pause: str | None = None) -> None:
    """Set the manifest in the root zarr.json (zarr v3 group metadata), atomically."""
    meta = json.loads((path / "zarr.json").read_bytes())
    meta.setdefault("attributes", {})[ATTR] = manifest
    atomic_write(path / "zarr.json", json.dumps(meta, indent=2).encode(), pause)


def sync_all(files: list[Path], root: Path) -> None:
    """fsync each file, then each folder from its parent up to `root` (which hold the names), each once: what a
    power loss may then not take back. Nothing on an object store (a PUT that returned is durable). The fsyncs
    are issued together from a few threads (fsync releases the GIL): the file system commits its journal for
    all those in flight at once, where one after another each paid a commit (~2.5 ms here)."""
    if isinstance(root, FsPath):
        return
    folders: dict[Path, None] = {root: None}
    for f in files:
        d = f.parent
        while d != root and root in d.parents:
            folders[d] = None
            d = d.parent
    with ThreadPoolExecutor(max_workers=SYNC_THREADS) as pool:
        list(pool.map(fsync_file, files))  # the files' bytes and inodes first,
        list(pool.map(fsync_file, folders))  # then the entries that name them


def chunk_files(path: Path, name: str, b: int, ndim: int) -> list[Path]:
    """The chunk file of block b of array `name` (default zarr v3 chunk key encoding, "/" separator)."""
    return [path / name / "c" / str(b) / Path(*(["0"] * (ndim - 1)))] if ndim > 1 else [path / name / "c" / str(b)]


def _own(name: str) -> bool:
    """A store's own file, a lock, or a temp file a killed writer (ours or zarr's) left behind."""
    return name in OWN_NAMES or name.startswith("_lock") or name.endswith(".partial") or (name.startswith(".") and name.endswith(".tmp"))


def refuse_foreign(path: Path) -> None:
    """StoreError if `path` exists and holds anything a store would not (a user's folder, a file): a store is
    never created over it. A missing path, an empty folder or a store's own files pass."""
    if not path.exists():
        return
    if not path.is_dir():
        raise StoreError(f"{path}: exists and is a file, not a kd-cache store; choose another cache.path")
    foreign = [p.name for p in path.iterdir() if not _own(p.name)]
    if foreign:
        raise StoreError(
            f"{path}: exists and is not a kd-cache store (holds {sorted(foreign)[:3]}); "
            f"choose another cache.path or empty it yourself"
        )


def clear_for_create(path: Path) -> None:
    """Empty a folder before creating a store in it; refuse if it holds anything a store would not."""
    refuse_foreign(path)
    for p in path.iterdir():
        if p.name.startswith("_lock"):
            continue  # held by us
        if isinstance(p, FsPath):
            p.rmtree()  # an object, or every object under a prefix
        elif p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def remove_partials(path: Path) -> int:
    """Temp files left by a killed writer: zarr's `*.partial` chunks, our `.*.tmp` files (none on an object store)."""
    if isinstance(path, FsPath):
        return 0
    n = 0
    for pattern in ("**/*.partial", "**/.*.tmp", ".*.tmp"):
        for p in path.glob(pattern):
            if p.is_file():
                p.unlink()
                n += 1
    return n
