"""The writer lock: one writer per store (or one per shard), refused with the holder's name otherwise.

`<store>/_lock.json` is held with `flock` for as long as a writer has the store open. The kernel drops a
flock when its process dies, however it dies (kill -9 included), so a lock file left by a dead writer is
not held by anyone: the next writer takes it over at once, with no window in which two writers both hold
it, and says whose lock it took over. The JSON inside (pid, host, start time, command) is only there to
tell people who holds it. Needs a filesystem with working flock (local disks; NFS only with lockd).

Sharded teacher passes (process `shard` of `num_shards`, each writing its own blocks) hold `_lock.json`
shared plus `_lock.shard-<i>-of-<n>.json` exclusive: shards run side by side, the same shard twice or an
unsharded writer next to them is refused. Creating or replacing the store needs `_lock.json` exclusive.

Opening is serialised by `_lock.create` (`creating`): a writer holds it, waiting for its turn, only while it
checks the manifest and creates the store if needed. Shards started at the same instant on a new store
therefore take turns instead of refusing each other: the first creates it, the others find it and resume.

Object stores (`FsPath`) have no flock. There the lock is an object, `_lock.json` (one writer) or
`_lock.shard-<i>-of-<n>.json` (shard i), created with a conditional PUT (If-None-Match: *) that fails if the
object exists, and deleted on release: one writer per store, or one per shard. Nothing releases it when its
writer dies, so a lock object naming a dead process on this host is taken over, and one from another host is
refused with the object's URL to delete once its writer is known to be gone (docs/integrity.md).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from ..errors import StoreError
from .location import FsPath, redact

LOCK = "_lock.json"


def _shard_name(shard: int, num_shards: int) -> str:
    return f"_lock.shard-{shard}-of-{num_shards}.json"


def _describe(info: dict | None) -> str:
    if not info:
        return "an unknown process (lock file empty)"
    return f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started_at')}"


def _read_info(f) -> dict | None:
    try:
        f.seek(0)
        data = f.read(65536)
        info = json.loads(data) if data.strip() else None  # may be nested deep: RecursionError, caught below
        return info if isinstance(info, dict) else None
    except (OSError, ValueError, RecursionError):
        return None


def _try_flock(f, mode: int) -> bool:
    try:
        fcntl.flock(f.fileno(), mode | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise StoreError(f"{f.name}: cannot lock the store ({e.strerror}); this filesystem needs flock support") from e


class StoreLock:
    def __init__(self, store: Path, shard: int, num_shards: int):
        self.store = store
        self.sharded = num_shards > 1
        self.shard_label = f"{shard}/{num_shards}"
        self.files: list = []  # open lock files, main first
        self.taken_over: list[dict] = []  # holder info of stale locks we replaced
        self.exclusive = False
        self._paths = [store / LOCK] + ([store / _shard_name(shard, num_shards)] if self.sharded else [])

    @classmethod
    def acquire(cls, store: str | Path, shard: int = 0, num_shards: int = 1) -> "StoreLock":
        if isinstance(store, FsPath):
            return ObjectLock.acquire(store, shard, num_shards)
        store = Path(store)
        try:
            store.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"{store}: cannot create the store folder ({e.strerror})") from e
        lock = cls(store, shard, num_shards)
        try:
            lock._take(lock._paths[0], fcntl.LOCK_SH if lock.sharded else fcntl.LOCK_EX)
            lock.exclusive = not lock.sharded
            if lock.sharded:
                lock._take(lock._paths[1], fcntl.LOCK_EX)
        except BaseException:
            lock.release()
            raise
        return lock

    def _take(self, path: Path, mode: int) -> None:
        try:
            f = open(path, "a+")
        except OSError as e:
            raise StoreError(f"{path}: cannot open the lock file ({e.strerror}); writing a store needs a writable location") from e
        if not _try_flock(f, mode):
            info = _read_info(f)
            f.close()
            raise StoreError(self._refusal(path, info))
        self.files.append(f)
        old = _read_info(f)
        if old and old.get("pid") is not None:
            self.taken_over.append(old)  # its process is gone (the kernel released its flock)
        if mode == fcntl.LOCK_EX:
            self._write_info(f)
        else:  # shared: no exclusive holder can exist now, so any info in the file is stale; shards name
            f.seek(0)  # themselves in their own shard lock files
            f.truncate()

    def _refusal(self, path: Path, info: dict | None) -> str:
        if path.name == LOCK and info is None:
            holders = [_describe(i) + f" (shard {i.get('shard')})" for i in active_holders(self.store)]
            who = "sharded writers: " + "; ".join(holders) if holders else "sharded writers"
        else:
            who = _describe(info)
        return (
            f"{self.store}: another writer holds the store lock ({who}); wait for it to finish, or stop it. "
            f"A lock left by a dead process is taken over automatically"
        )

    def _write_info(self, f) -> None:
        f.seek(0)
        f.truncate()
        f.write(json.dumps(_holder_info(self.shard_label)))
        f.flush()

    def make_exclusive(self, why: str) -> None:
        """Sharded writers hold the main lock shared; creating or replacing the store needs it alone."""
        if self.exclusive:
            return
        main = self.files[0]
        if not _try_flock(main, fcntl.LOCK_EX):
            raise StoreError(f"{self.store}: cannot {why} while other shards are writing it ({len(active_holders(self.store))} active)")
        self.exclusive = True

    def share(self) -> None:
        """Back to shared after creating (sharded writers only), so the other shards can join."""
        if self.sharded and self.exclusive:
            self.exclusive = False
            if not _try_flock(self.files[0], fcntl.LOCK_SH):  # flock conversion is not atomic
                raise StoreError(f"{self.store}: another writer took the store lock while this shard created the store")

    def release(self) -> None:
        for f in reversed(self.files):
            try:
                if self.exclusive or f is not self.files[0]:
                    f.seek(0)
                    f.truncate()  # an empty lock file: nobody holds it
            except OSError:
                pass
            f.close()  # closing drops the flock
        self.files = []


def _holder_info(shard_label: str) -> dict:
    """Who writes: told to people who are refused. The command line is redacted (no secrets in a store)."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "shard": shard_label,
        "command": redact(" ".join(sys.argv))[:500],
    }


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True  # exists (someone else's), or not a pid we can judge: assume alive
    return True


class ObjectLock:
    """The writer lock of a store on an object store: a lock object created by a conditional PUT."""

    def __init__(self, store: FsPath, shard: int, num_shards: int):
        self.store, self.sharded = store, num_shards > 1
        self.shard_label = f"{shard}/{num_shards}"
        self.obj = store / (_shard_name(shard, num_shards) if self.sharded else LOCK)
        self.taken_over: list[dict] = []
        self.exclusive = False
        self.held = False

    @classmethod
    def acquire(cls, store: FsPath, shard: int = 0, num_shards: int = 1) -> "ObjectLock":
        store._writable()
        lock = cls(store, shard, num_shards)
        data = json.dumps(_holder_info(lock.shard_label)).encode()
        for _ in range(2):
            if lock.obj.create(data):
                lock.held = True
                break
            info = _read_object(lock.obj)
            if not info or info.get("pid") is None:  # empty: a released local lock file, copied with the store
                lock.obj.unlink(missing_ok=True)
                continue
            if info.get("host") == socket.gethostname() and not _pid_alive(info.get("pid")):
                lock.obj.unlink(missing_ok=True)  # its writer died on this host: take it over
                lock.taken_over.append(info)
                continue
            raise StoreError(lock._refusal(info))
        if not lock.held:
            raise StoreError(lock._refusal(_read_object(lock.obj)))
        others = [h for h in active_holders(store) if not lock._mine(h)]
        clash = others if not lock.sharded else [h for h in others if h.get("shard") == "0/1"]  # shards beside an unsharded writer
        if clash:
            lock.release()
            raise StoreError(lock._refusal(clash[0]))
        lock.exclusive = not lock.sharded
        return lock

    def _mine(self, info: dict) -> bool:
        return (info.get("pid"), info.get("host"), info.get("shard")) == (os.getpid(), socket.gethostname(), self.shard_label)

    def _refusal(self, info: dict | None) -> str:
        return (f"{self.store}: another writer holds the store lock ({_describe(info)}); wait for it to finish, or stop it. "
                f"Object stores have no flock: if that writer is gone, delete {self.obj} and rerun")

    def make_exclusive(self, why: str) -> None:
        """Creating or replacing the store: no other writer's lock object may exist."""
        others = [h for h in active_holders(self.store) if not self._mine(h)]
        if others:
            raise StoreError(f"{self.store}: cannot {why} while other writers hold lock objects ({_describe(others[0])})")
        self.exclusive = True

    def share(self) -> None:
        self.exclusive = not self.sharded

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                self.obj.unlink(missing_ok=True)
            except Exception:
                pass  # best effort: a lock object left behind names us, and a rerun on this host takes it over


def _read_object(obj: FsPath) -> dict | None:
    try:
        info = json.loads(obj.read_bytes()[:65536])
        return info if isinstance(info, dict) else None
    except Exception:
        return None


CREATE_LOCK = "_lock.create"
CREATE_WAIT_S = 120.0  # how long a writer waits for another one to finish opening or creating the store


@contextmanager
def creating(store: Path, wait_s: float = CREATE_WAIT_S):
    """Held while a writer checks and (re)creates the store; waits for its turn (polling, so a stuck holder
    becomes a one-line error instead of a hang). On an object store the lock object alone serialises openers."""
    if isinstance(store, FsPath):
        yield
        return
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"{store}: cannot create the store folder ({e.strerror})") from e
    try:
        f = open(store / CREATE_LOCK, "a+")
    except OSError as e:
        raise StoreError(f"{store / CREATE_LOCK}: cannot open the lock file ({e.strerror}); writing a store needs a writable location") from e
    try:
        deadline = time.monotonic() + wait_s
        while not _try_flock(f, fcntl.LOCK_EX):
            if time.monotonic() > deadline:
                raise StoreError(f"{store}: another writer has been opening the store for {wait_s:.0f} s; is it stuck? ({_describe(_read_info(f))})")
            time.sleep(0.02)
        yield
    finally:
        f.close()  # drops the flock


def active_holders(store: Path) -> list[dict]:
    """Who holds the lock now (probed without blocking anyone); [] when no writer is active."""
    if isinstance(store, FsPath):
        return [i for i in (_read_object(p) for p in store.glob("_lock*.json")) if i and i.get("pid") is not None]
    out = []
    for path in [store / LOCK, *sorted(store.glob("_lock.shard-*.json"))]:
        try:
            with open(path, "r") as f:
                mode = fcntl.LOCK_SH if path.name == LOCK else fcntl.LOCK_EX
                if _try_flock(f, mode):
                    continue  # nobody holds it exclusively
                info = _read_info(f)
                out.append(info or {})
        except OSError:
            continue
    return out
