"""Which store a run folder may write: only the one its own teacher pass created.

A store someone gave you is input, never output: `kd run` creates, resumes or rebuilds a store only when this
run folder's cache_teacher stage created it. The record lives in the run folder, not in the store (a copied
store carries no claim): `<out>/.kd/owned-store.json` = {"store": where, "identity": sha256 of the manifest
identity (store/format.py `Manifest.identity`)}, written when the stage creates a store. Any other store at
`cache.path` (complete or not, made by another teacher, configuration or run folder, or readable only) is
refused with one line before anything is written to it, lock files included.

Run folders made before this record existed: the store under `<out>` that the folder's own cache_teacher stamp
names is taken as theirs.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

from .store import Manifest
from .store.files import atomic_write
from .store.location import FsPath, display

OWNED = "owned-store.json"


def identity_hash(m: Manifest) -> str:
    return hashlib.sha256(json.dumps(m.identity(), sort_keys=True).encode()).hexdigest()


def _who(m: Manifest) -> str:
    t = m.teacher
    return f"teacher {t.factory} {t.kwargs} (checkpoint sha256 {t.checkpoint_sha256[:12]}…)"


def _differences(a: Manifest, b: Manifest) -> list[str]:
    """The configuration keys (besides the teacher) in which two manifests differ, as 'key: a vs b'."""
    da, db = a.identity(), b.identity()
    out = []
    for k in da.keys() | db.keys():
        if k == "teacher" or da.get(k) == db.get(k):
            continue
        va, vb = da.get(k), db.get(k)
        if k == "dataset":
            va, vb = va.get("fingerprint", "")[:19] + "…", vb.get("fingerprint", "")[:19] + "…"
            k = "dataset fingerprint"
        out.append(f"{k} {va} vs {vb}")
    return sorted(out)


class RunOwner:
    """The run folder `out_dir` as the owner of the store its teacher pass writes (CacheWriter.open's owner)."""

    def __init__(self, out_dir: Path, teacher=None):
        self.out_dir = Path(out_dir)
        self.teacher = teacher  # the pipeline's teacher Component, for messages before its manifest exists
        self.file = self.out_dir / ".kd" / OWNED

    def key(self, path) -> str:
        """How the store is named in the record: a URL, a path under the run folder (so a copied run folder
        owns its copied store), or an absolute path."""
        if isinstance(path, FsPath):
            return display(path)
        p, out = Path(path).resolve(), self.out_dir.resolve()
        return f"<out>/{p.relative_to(out).as_posix()}" if p.is_relative_to(out) else str(p)

    def _record(self) -> dict | None:
        try:
            d = json.loads(self.file.read_text())
            return d if isinstance(d, dict) else None
        except (OSError, ValueError):
            return None

    def owns(self, path, m: Manifest) -> bool:
        rec = self._record()
        if rec is not None:
            return rec.get("store") == self.key(path) and rec.get("identity") == identity_hash(m)
        return self._legacy(path)

    def _legacy(self, path) -> bool:
        if isinstance(path, FsPath) or not self.key(path).startswith("<out>/"):
            return False
        try:
            stamp = json.loads((self.out_dir / ".kd" / "stamps" / "cache_teacher.json").read_text())
        except (OSError, ValueError):
            return False
        return str(path) in (stamp.get("outs") or {})

    def record(self, path, m: Manifest) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        rec = {"store": self.key(path), "identity": identity_hash(m), "teacher_sha256": m.teacher.checkpoint_sha256,
               "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        atomic_write(self.file, json.dumps(rec, indent=1).encode())

    def refusal(self, path, existing: Manifest, wanted: Manifest | None, config_diff: list[str] = ()) -> str:
        """One line: what the store holds, what this pipeline has, and what to do instead. wanted: the manifest
        this pipeline would write; before its teacher exists, config_diff: how its config differs instead."""
        state = "complete" if existing.complete else "incomplete"
        if wanted is not None:
            ours = _who(wanted)
            diff = _differences(existing, wanted)
            same = "the same teacher, " if (existing.teacher == wanted.teacher) else ""
            ours = f"{same}{ours}" + (f", {'; '.join(diff)} (store vs pipeline)" if diff else "")
        else:
            t = self.teacher
            ours = f"teacher {t.factory} {dict(t.kwargs)}" if t is not None else "no teacher"
            ours += f", {'; '.join(config_diff)} (store vs pipeline)" if config_diff else ""
        return (
            f"{path}: holds a {state} store that this run folder ({self.out_dir}) did not create — store: {_who(existing)}; "
            f"this pipeline: {ours}. kd run never resumes, replaces or rewrites a store it did not create: to train from it, "
            f"remove teacher, teacher_train and every cache key but path (README: Train from a store you received); "
            f"to cache your own teacher, set cache.path to a new folder"
        )
