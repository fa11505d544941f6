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


FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text", ".text": "text"}


def hf_files(split: str, files: dict[str, str | list[str]], field: str = "text", format: str | None = None):
    """A corpus from local files through Hugging Face `datasets`, streamed and offline (HF_DATASETS_OFFLINE=1).

    files: split name -> a path or list of paths (globs allowed). format: `json` (JSON lines, or a JSON list),
    `parquet` or `text` (each file one document); None = from the first file's extension (.jsonl/.json,
    .parquet, .txt). field: the column holding each document: a string (a text) or a list of
    {role, content} messages (a conversation, rendered with the tokenizer's chat template; only assistant
    tokens carry loss). -> an iterable over the split's documents, read as it is iterated.
    Raises DataError for an unknown split, missing files or a missing field."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local files only: never reach the Hub
    if split not in files:
        raise DataError(f"data.kwargs.files: no files for split {split!r} (splits: {list(files)})")
    paths = [files[split]] if isinstance(files[split], str) else list(files[split])
    if not paths:
        raise DataError(f"data.kwargs.files.{split}: empty list")
    fmt = format or FORMATS.get(Path(paths[0]).suffix)
    if fmt not in ("json", "parquet", "text"):
        raise DataError(f"data.kwargs.files.{split}: cannot tell the format of {paths[0]!r}; set data.kwargs.format (json, parquet, text)")
    try:
        import datasets
    except ImportError:
        raise DataError("data.factory: hf_files needs the datasets library: pip install -e '.[hf]'") from None
    extra = {"sample_by": "document"} if fmt == "text" else {}
    try:
        ds = datasets.load_dataset(fmt, data_files={split: paths}, split=split, streaming=True, **extra)
    except Exception as e:  # missing files, unreadable JSON: one line
        raise DataError(f"data.kwargs.files.{split}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    key = "text" if fmt == "text" else field
    return _Column(ds, key, split)


class _Column:
    """One column of a streamed dataset, iterable as many times as needed (each pass streams the files again)."""

    def __init__(self, ds, key: str, split: str):
        self.ds, self.key, self.split = ds, key, split

    def __iter__(self):
        for i, row in enumerate(self.ds):
            if self.key not in row:
                raise DataError(f"data: split {self.split!r} row {i}: no field {self.key!r} (fields: {list(row)}); set data.kwargs.field")
            yield row[self.key]
