"""Reading completion markers and checking block bytes against them (reader, `kd verify`).

A marker `_markers/block-<b>.json` is {"block": b, "rows": [start, stop], "sha256": {array: hex}}; the
writer renames it into place only after the block's chunks are on disk. `_markers/samples.json` holds the
sha256 of samples.parquet. Markers come from untrusted stores too: every field is checked.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from ..errors import StoreError
from .files import SAMPLES_MARKER
from .format import MARKERS, Manifest
from .location import FsPath

_HEX = re.compile(r"^[0-9a-f]{64}$")
MAX_MARKER_BYTES = 1 << 16


def block_sha256(a: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(a)).cast("B")).hexdigest()


def marker_path(store: Path, b: int) -> Path:
    return store / MARKERS / f"block-{b:08d}.json"


def _load_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise StoreError(f"{path}: {what} is missing")
    if path.stat().st_size > MAX_MARKER_BYTES:
        raise StoreError(f"{path}: {what} is larger than {MAX_MARKER_BYTES} bytes")
    return parse_json(path, path.read_bytes(), what)


def parse_json(path: Path, data: bytes | None, what: str, cap: int = MAX_MARKER_BYTES) -> dict:
    """A store's JSON file (untrusted): at most `cap` bytes, valid JSON, an object -> the dict; else StoreError
    naming the file as `what`."""
    if data is None:
        raise StoreError(f"{path}: {what} is missing")
    if len(data) > cap:
        raise StoreError(f"{path}: {what} is larger than {cap} bytes")
    try:
        d = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep, well under the size cap
        raise StoreError(f"{path}: {what} is not valid JSON") from None
    if not isinstance(d, dict):
        raise StoreError(f"{path}: {what} is not a JSON object")
    return d


def read_marker(store: Path, m: Manifest, b: int) -> dict[str, str]:
    """-> array name -> sha256 of block b's bytes; StoreError if the marker is missing or wrong."""
    p = marker_path(store, b)
    return _check_marker(p, m, b, _load_json(p, f"completion marker of block {b}"))


def _check_marker(p: Path, m: Manifest, b: int, d: dict) -> dict[str, str]:
    start = b * m.chunk_rows
    rows = [start, min(start + m.chunk_rows, m.num_rows)]
    if d.get("block") != b or d.get("rows") != rows:
        raise StoreError(f"{p}: marker says block {d.get('block')!r} rows {d.get('rows')!r}, expected block {b} rows {rows}")
    sums = d.get("sha256")
    names = set(m.array_specs())
    if not isinstance(sums, dict) or set(sums) != names or not all(isinstance(v, str) and _HEX.match(v) for v in sums.values()):
        raise StoreError(f"{p}: marker sha256 must map exactly the arrays {sorted(names)} to sha256 hex digests")
    return sums


def read_all_markers(store: Path, m: Manifest) -> list[dict[str, str]]:
    if isinstance(store, FsPath):  # one request per marker, all in flight together; the same checks on each
        paths = [marker_path(store, b) for b in range(m.num_blocks)]
        data = (store / MARKERS).read_many([p.name for p in paths])
        return [_check_marker(p, m, b, parse_json(p, d, f"completion marker of block {b}")) for b, (p, d) in enumerate(zip(paths, data))]
    return [read_marker(store, m, b) for b in range(m.num_blocks)]


def samples_sha256(store: Path) -> str:
    d = _load_json(store / MARKERS / SAMPLES_MARKER, "checksum of samples.parquet")
    v = d.get("sha256")
    if not isinstance(v, str) or not _HEX.match(v):
        raise StoreError(f"{store / MARKERS / SAMPLES_MARKER}: sha256 must be a hex digest")
    return v


def mismatched(block: dict[str, np.ndarray], sums: dict[str, str]) -> list[str]:
    """Arrays of a block whose bytes do not hash to the marker's sha256."""
    return [name for name, a in block.items() if name in sums and block_sha256(a) != sums[name]]
