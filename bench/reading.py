"""Reading benchmark: the student stage's streaming rows/s ÷ numpy memmap random-batch rows/s, same arrays.

    .venv/bin/python -m bench.reading                 # pipeline.yaml's store, batch 100, 5 rounds
    .venv/bin/python -m bench.reading --passes 4 --rounds 7

- stream: `kd_pipeline.stream.BlockStream` over the real store (made by the prepare_data and cache_teacher
  stages), as the student stage builds it (batch = student_train.batch_size, window = distill.shuffle_window,
  per-block checks on, ids decoded per block): each batch is every store array of its samples' rows (numpy)
  and the samples' split, id and label. A fresh stream each round (its first window is read on the clock:
  nothing is prefetched for free); also reported without the per-block checks (`check=False`);
- student batches: `student_batches`, the student stage's iterator — the stream above, plus the rows as
  Targets (torch) and the inputs fetched from the dataset by sample id through the DataLoader;
- memmap: every store array of the training rows copied once into an `.npy` file, opened with
  `np.load(mmap_mode="r")`, read as random batches (`a[idx]` for uniform random training rows) — the nanoGPT
  way, the fastest plain baseline; "memmap + inputs" also reads the rows' inputs and labels (an .npy in row
  order), i.e. what `student batches` delivers.
The store's test-split rows (after the training rows) are never streamed; memmap draws from the training
rows only. Warm page cache for all. Goal: stream / memmap >= 0.5 (the figure of earlier runs); student
batches / (memmap + inputs) is the same question for everything the student consumes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from bench.common import alternate, apply_threads, median_ratio, pipeline_store, store_bench_args, summary, verdict
from kd_pipeline.prepare import open_samples
from kd_pipeline.store import open_store
from kd_pipeline.stream import BlockStream, student_batches

GOAL = 0.5


def _memmaps(store, samples, folder: Path) -> tuple[dict, dict, int]:
    """Store arrays of the training rows, and the inputs and labels of those rows (row order), as memmaps.
    -> (arrays, inputs, training rows)."""
    m = store.manifest
    n = sum(k for s, k in m.dataset.split_sizes.items() if s != m.dataset.eval_split)  # classification: 1 row each
    arrays, inputs = {}, {}
    for name, a in store.arrays.items():
        np.save(folder / (name.replace("/", "__") + ".npy"), a[:n])
    xs, ys = [], []
    for b in range(store.num_blocks):
        s = store.samples.block(*store.block_rows(b))
        keep = s["row"] < n
        if keep.any():
            got = samples.__getitems__((s["split"][keep], s["sample_id"][keep]))
            xs.append(got["x"].numpy())
            ys.append(got["y"].numpy())
    np.save(folder / "inputs.npy", np.concatenate(xs))
    np.save(folder / "labels.npy", np.concatenate(ys))
    for name in store.arrays:
        arrays[name] = np.load(folder / (name.replace("/", "__") + ".npy"), mmap_mode="r")
    for name in ("inputs", "labels"):
        inputs[name] = np.load(folder / f"{name}.npy", mmap_mode="r")
    return arrays, inputs, n


def run(out: Path, passes: float, rounds: int, sets: list[str] = (), log=print) -> dict:
    cfg = pipeline_store(out, *sets)
    store = open_store(cfg.cache_path)
    m = store.manifest
    samples = open_samples(cfg, m.dataset.splits)
    bs, window = cfg.student_train.batch_size, cfg.distill.shuffle_window
    with tempfile.TemporaryDirectory(prefix="kd-bench-read-") as tmp:
        mm, mm_in, n_train = _memmaps(store, samples, Path(tmp))
        n_batches = max(1, int(passes * n_train) // bs)
        rng = np.random.default_rng(0)

        def memmap(with_inputs: bool):
            def read() -> int:
                for _ in range(n_batches):
                    idx = rng.integers(0, n_train, bs)
                    _ = {k: a[idx] for k, a in mm.items()}  # a fancy index copies the rows out
                    if with_inputs:
                        _ = {k: a[idx] for k, a in mm_in.items()}
                return n_batches * bs

            return read

        its: dict[str, object] = {}

        def fresh(name: str, make):
            def setup() -> None:  # a new stream per round, its reader thread started on the clock:
                if name in its:  # conservative, and no window prefetched while the other side ran
                    its[name].close()
                its[name] = make()

            def read() -> int:
                for _ in range(n_batches):
                    next(its[name])
                return n_batches * bs

            return setup, read

        streams = {
            "stream": fresh("stream", lambda: iter(BlockStream(store, bs, window, cfg.seed))),
            "stream (no checks)": fresh("stream (no checks)", lambda: iter(BlockStream(store, bs, window, cfg.seed, check=False))),
            "student batches": fresh("student batches", lambda: student_batches(store, samples, bs, window, cfg.seed, num_workers=cfg.data.num_workers)),
        }
        fns = {name: read for name, (_, read) in streams.items()} | {"memmap": memmap(False), "memmap + inputs": memmap(True)}
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
    ratio_sb = median_ratio(rates, "student batches", "memmap + inputs")
    row_bytes = sum(np.dtype(a.dtype).itemsize * int(np.prod(a.shape[1:])) for a in store.arrays.values())
    log(f"store {m.num_rows} rows ({n_train} streamed) x {row_bytes} B/row in {m.num_blocks} blocks of {m.chunk_rows}, batch {bs}, "
        f"{n_batches} batches x {rounds} rounds: {summary(rates)}")
    log(f"  stream / memmap = {ratio:.3f}  {verdict(ratio, GOAL)}   (without per-block checks: {ratio_nc:.3f})")
    log(f"  student batches / memmap + inputs = {ratio_sb:.3f}  {verdict(ratio_sb, GOAL)}")
    return {"stream/memmap": ratio, "stream_nocheck/memmap": ratio_nc, "batches/memmap_inputs": ratio_sb, "rates": rates}


def main(argv: list[str] | None = None) -> None:
    ap = store_bench_args(__doc__)
    ap.add_argument("--passes", type=float, default=4.0, help="passes over the store's training rows per timed call")
    a = ap.parse_args(argv)
    apply_threads(a)
    run(a.out, a.passes, a.rounds, a.sets)


if __name__ == "__main__":
    main()
