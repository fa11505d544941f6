"""The manifest and samples table of a sequence store (kind "sequence", docs/store-format-sequence.md)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from ..store import Manifest
from ..store.format import indices_dtype


def tokens_fingerprint(ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (ids.astype(np.int32), starts.astype(np.int64), lengths.astype(np.int64)):
        h.update(np.ascontiguousarray(a).tobytes())
    return "sha256:" + h.hexdigest()


def sequence_manifest(cfg, split: str, ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray, teacher_sha256: str) -> Manifest:
    """cfg: PipelineConfig of a sequence pipeline; rows = the tokens of `split`'s samples, back to back."""
    from .. import __version__

    c, V = cfg.cache, cfg.data.num_classes
    sampled = c.targets == "sampled"
    return Manifest(
        format="kd-cache",
        version=1,
        kind="sequence",
        num_classes=V,
        top_k=min(c.draws, V) if sampled else c.top_k,
        temperatures=list(c.temperatures),
        values_dtype=c.values_dtype,
        indices_dtype=indices_dtype(V),
        indices_scheme="plain" if c.ids == "plain" else "packed",
        values_scheme="q8" if c.values_dtype == "uint8" else "relative",
        targets=c.targets,
        sample_draws=c.draws if sampled else None,
        sample_temperature=c.temperatures[0] if sampled else None,
        num_rows=int(lengths.sum()),
        chunk_rows=c.chunk_rows,
        teacher={"factory": cfg.teacher.factory, "kwargs": dict(cfg.teacher.kwargs), "checkpoint_sha256": teacher_sha256},
        dataset={
            "factory": cfg.data.factory,
            "kwargs": {**cfg.data.kwargs, "context": cfg.sequence.context},
            "splits": [split],
            "split_sizes": {split: len(starts)},
            "num_samples": len(starts),
            "fingerprint": tokens_fingerprint(ids, starts, lengths),
        },
        complete=False,
        created_with=f"kd-pipeline {__version__}",
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def sequence_samples_table(split: str, lengths: np.ndarray) -> pa.Table:
    """One row per sample: its first store row and its number of rows (= tokens); no labels."""
    n = len(lengths)
    row = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if n else np.zeros(0, np.int64)
    return pa.table(
        {
            "sample_id": pa.array(np.arange(n, dtype=np.int64), pa.int64()),
            "split": pa.array([split] * n, pa.string()),
            "row": pa.array(row, pa.int64()),
            "num_rows": pa.array(lengths.astype(np.int64), pa.int64()),
            "label": pa.nulls(n, pa.int64()),
        }
    )


def target_bytes_per_token(m: Manifest) -> int:
    """Bytes of the stored targets per row (= per token): every declared array but the input tokens."""
    return sum(int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
               for name, (shape, dtype) in m.array_specs().items() if name != "tokens" and not name.startswith("features/"))
