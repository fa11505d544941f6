"""The rows of samples.parquet: whole tables (samples_table), a block's part (span_table) and where parts live
(`_markers/samples-<b>.parquet`, folded into samples.parquet when the store is finalized; docs/store-format.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .format import MARKERS

SAMPLES_SCHEMA = pa.schema([("sample_id", pa.int64()), ("split", pa.string()), ("row", pa.int64()),
                            ("num_rows", pa.int64()), ("label", pa.int64())])


def samples_part_path(path: Path, b: int) -> Path:
    return path / MARKERS / f"samples-{b:08d}.parquet"


def parquet_bytes(table: pa.Table) -> bytes:
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    return buf.getvalue().to_pybytes()


def span_table(names: list[str], span, labels: np.ndarray | None) -> pa.Table:
    """samples.parquet rows for a layout Span (kd_pipeline/layout.py); labels (n,) int64, -1 = null."""
    lab = np.full(len(span), -1, np.int64) if labels is None else np.asarray(labels, np.int64)
    return pa.table(
        {
            "sample_id": pa.array(span.sample_id, pa.int64()),
            "split": pa.array(names, pa.string()).take(pa.array(span.split, pa.int64())),
            "row": pa.array(span.row0, pa.int64()),
            "num_rows": pa.array(span.num_rows, pa.int64()),
            "label": pa.array(lab, pa.int64(), mask=lab < 0),
        },
        schema=SAMPLES_SCHEMA,
    )


def samples_table(split_sizes: dict[str, int], labels: dict[str, np.ndarray]) -> pa.Table:
    """One row per sample for classification stores: row = running index over splits in order."""
    ids, splits, rows, labs = [], [], [], []
    row = 0
    for split, n in split_sizes.items():
        ids.append(np.arange(n, dtype=np.int64))
        splits += [split] * n
        rows.append(np.arange(row, row + n, dtype=np.int64))
        labs.append(labels[split].astype(np.int64))
        row += n
    lab = np.concatenate(labs) if labs else np.zeros(0, np.int64)
    return pa.table(
        {
            "sample_id": pa.array(np.concatenate(ids) if ids else [], pa.int64()),
            "split": pa.array(splits, pa.string()),
            "row": pa.array(np.concatenate(rows) if rows else [], pa.int64()),
            "num_rows": pa.array(np.ones(row, np.int64), pa.int64()),
            "label": pa.array(lab, pa.int64(), mask=lab < 0),
        }
    )
