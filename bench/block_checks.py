"""What the per-block checks cost the student's reader, measured side by side in one run.

Store: synthetic top-16 of 1000 classes + a 256-wide float16 feature (608 B/row, the synthetic layout of an
earlier storage study), 100,000 rows in 4096-row blocks, on local disk, warm page cache. For each variant,
every block is read once (3 passes, best kept): read only; read + content checks (ids, finite, sorted, lse); read + content
checks + sha256 against the markers (what the student stage does); and `kd verify` of the whole store.
Run: `python -m bench.block_checks` (about 30 s on 2 cores).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kd_pipeline.store import CacheWriter, Manifest, open_store
from kd_pipeline.store.values import encode_targets, to_host
from kd_pipeline.store.verify import verify_store
from kd_pipeline.store.samples_parts import samples_table
from kd_pipeline.targets import teacher_rows

ROWS, CLASSES, K, FEAT, CHUNK = 100_000, 1000, 16, 256, 4096


def build(path: Path) -> None:
    m = Manifest(
        format="kd-cache", version=1, kind="classification", num_classes=CLASSES, top_k=K, temperatures=[1.0, 4.0],
        values_dtype="float16", indices_dtype="int16", values_scheme="relative", num_rows=ROWS, chunk_rows=CHUNK,
        teacher={"factory": "bench:t", "kwargs": {}, "checkpoint_sha256": "0" * 64},
        dataset={"factory": "bench:d", "kwargs": {}, "splits": ["train"], "split_sizes": {"train": ROWS}, "num_samples": ROWS, "fingerprint": "sha256:bench"},
        features={"f": {"shape": [FEAT], "dtype": "float16", "module": "body"}}, complete=False, created_with="bench",
    )
    g = torch.Generator().manual_seed(0)
    with CacheWriter.open(path, m) as w:
        for b in w.pending_blocks():
            s, e = w.block_rows(b)
            t = to_host(encode_targets(teacher_rows(torch.randn(e - s, CLASSES, generator=g) * 3, m), m), m)
            w.write_block(b, {**t, "features/f": torch.randn(e - s, FEAT, generator=g).numpy().astype(np.float16)})
        w.finalize(samples_table({"train": ROWS}, {"train": np.zeros(ROWS, np.int64)}))


def rows_per_s(fn) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return ROWS / best


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s"
        build(path)
        store = open_store(path)
        markers = store.markers

        def read():
            for b in range(store.num_blocks):
                store.read_block(b)

        def read_content():
            store.markers = None
            for b in range(store.num_blocks):
                store.check_block(b, store.read_block(b))
            store.markers = markers

        def read_all_checks():
            for b in range(store.num_blocks):
                store.check_block(b, store.read_block(b))

        res = {
            "read only": rows_per_s(read),
            "read + content checks": rows_per_s(read_content),
            "read + content checks + sha256 (student stage)": rows_per_s(read_all_checks),
            "kd verify (whole store)": rows_per_s(lambda: verify_store(path)),
        }
        store.close()
    base = res["read only"]
    print(f"{ROWS:,} rows x 608 B, {CHUNK}-row blocks, torch threads {torch.get_num_threads()}")
    for name, r in res.items():
        print(f"{name:48s} {r / 1e6:6.2f} M rows/s   {r / base:5.2f} x read-only")


if __name__ == "__main__":
    main()
