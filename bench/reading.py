"""Reading benchmark: the student stage's streaming rows/s ÷ numpy memmap random-batch rows/s, same arrays.

    .venv/bin/python -m bench.reading                 # pipeline.yaml's store, batch 100, 5 rounds
    .venv/bin/python -m bench.reading --passes 4 --rounds 7

- stream: `BlockStream` over the real store (made by the cache_teacher stage), as the student stage builds
  it (batch = student_train.batch_size, window = distill.shuffle_window, per-block checks on), a fresh
  stream each round (its first window is read on the clock: nothing is prefetched for free); also
  reported without the per-block checks (`check=False`) to show what validation costs;
- memmap: every store array copied once into an `.npy` file, opened with `np.load(mmap_mode="r")`, and
  read as random batches (`a[idx]` for uniform random row ids) — the nanoGPT way, the fastest plain
  baseline. Both yield every array of the store for each batch (topk_logits, topk_indices, lse, features).
Warm page cache for both. Goal: stream / memmap >= 0.5.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from bench.common import alternate, apply_threads, median_ratio, pipeline_store, store_bench_args, summary, verdict
from kd_pipeline.store import open_store
from kd_pipeline.stream import BlockStream

GOAL = 0.5


def run(out: Path, passes: float, rounds: int, sets: list[str] = (), log=print) -> dict:
    cfg = pipeline_store(out, *sets)
    store = open_store(cfg.cache_path)
    m = store.manifest
    bs = cfg.student_train.batch_size
    n_batches = max(1, int(passes * m.num_rows) // bs)
    with tempfile.TemporaryDirectory(prefix="kd-bench-read-") as tmp:
        mm = {}
        for name, a in store.arrays.items():
            f = Path(tmp) / (name.replace("/", "__") + ".npy")
            np.save(f, a[:])
            mm[name] = np.load(f, mmap_mode="r")
        rng = np.random.default_rng(0)

        def memmap() -> int:
            for _ in range(n_batches):
                idx = rng.integers(0, m.num_rows, bs)
                _ = {k: a[idx] for k, a in mm.items()}  # a fancy index copies the rows out
            return n_batches * bs

        its: dict[str, object] = {}

        def fresh(name: str, check: bool):
            def setup() -> None:  # a new stream per round, its reader thread started on the clock:
                if name in its:  # conservative, and no window prefetched while the other side ran
                    its[name].close()
                its[name] = iter(BlockStream(store, bs, cfg.distill.shuffle_window, cfg.seed, check=check))

            def read() -> int:
                for _ in range(n_batches):
                    next(its[name])
                return n_batches * bs

            return setup, read

        streams = {"stream": fresh("stream", True), "stream (no checks)": fresh("stream (no checks)", False)}
        fns = {name: read for name, (_, read) in streams.items()} | {"memmap": memmap}
        setup = {name: s for name, (s, _) in streams.items()}
        for name, fn in fns.items():
            setup.get(name, lambda: None)()
            fn()  # warm-up: page cache, code paths
        rates = alternate(fns, rounds, setup)
        for it in its.values():
            it.close()
    store.close()
    ratio = median_ratio(rates, "stream", "memmap")
    ratio_nc = median_ratio(rates, "stream (no checks)", "memmap")
    row_bytes = sum(np.dtype(a.dtype).itemsize * int(np.prod(a.shape[1:])) for a in store.arrays.values())
    log(f"store {m.num_rows} rows x {row_bytes} B/row in {m.num_blocks} blocks of {m.chunk_rows}, batch {bs}, "
        f"{n_batches} batches x {rounds} rounds: {summary(rates)}")
    log(f"  stream / memmap = {ratio:.3f}  {verdict(ratio, GOAL)}   (without per-block checks: {ratio_nc:.3f})")
    return {"stream/memmap": ratio, "stream_nocheck/memmap": ratio_nc, "rates": rates}


def main(argv: list[str] | None = None) -> None:
    ap = store_bench_args(__doc__)
    ap.add_argument("--passes", type=float, default=4.0, help="passes over the store per timed call")
    a = ap.parse_args(argv)
    apply_threads(a)
    run(a.out, a.passes, a.rounds, a.sets)


if __name__ == "__main__":
    main()
