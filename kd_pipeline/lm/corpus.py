"""The LM track's corpus: the running interpreter's own standard-library `.py` sources (ships offline).

About 11 MB in ~670 files without the `test`/`tests` folders, `idlelib` and `site-packages`. Files go to
train/val/test by a stable hash of their path relative to the stdlib root, so a file never moves between
splits when others are added or removed, and two machines with the same Python get the same splits.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from pathlib import Path

from ..errors import DataError

EXCLUDED_DIRS = {"test", "tests", "idlelib", "site-packages", "__pycache__"}
SPLITS = ("train", "val", "test")


def stdlib_files(root: str | None = None) -> list[tuple[str, Path]]:
    """(relative posix path, file) of every stdlib .py outside EXCLUDED_DIRS, sorted by relative path."""
    base = Path(root or sysconfig.get_paths()["stdlib"])
    out = []
    for d, dirs, files in os.walk(base):
        dirs[:] = sorted(x for x in dirs if x not in EXCLUDED_DIRS)
        for f in files:
            if f.endswith(".py"):
                p = Path(d) / f
                out.append((p.relative_to(base).as_posix(), p))
    return sorted(out)


def split_of(rel: str, val_fraction: float, test_fraction: float) -> str:
    """Stable split of one file: the first 8 bytes of sha256(rel path) as a fraction in [0, 1)."""
    u = int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "big") / 2**64
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def stdlib_corpus(
    split: str,
    max_bytes: int | None = None,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    root: str | None = None,
) -> list[str]:
    """The texts of `split`'s files, in path order; `max_bytes` keeps the first files up to that many bytes
    (a budget for small machines: the example caps train to fit 15 minutes on 2 cores)."""
    if split not in SPLITS:
        raise DataError(f"data.split: {split!r} is not one of {list(SPLITS)}")
    texts, total = [], 0
    for rel, path in stdlib_files(root):
        if split_of(rel, val_fraction, test_fraction) != split:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if max_bytes is not None and total + len(text) > max_bytes and texts:
            break
        texts.append(text)
        total += len(text)
    if not texts:
        raise DataError(f"data: split {split!r} has no files (stdlib at {root or sysconfig.get_paths()['stdlib']})")
    return texts
