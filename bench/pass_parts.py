"""Where the teacher pass's time goes: its parts timed one after another in one thread (no overlap), per pass
over the store's rows, next to the whole pass — what `bench.teacher_pass`'s ratio is made of.

    .venv/bin/python -m bench.pass_parts                  # pipeline.yaml's teacher; median of 5 repeats
    .venv/bin/python -m bench.pass_parts --set teacher.kwargs.channels=256
    .venv/bin/python -m bench.pass_parts --no-fsync       # what the store's fsyncs cost (diagnosis only)

Parts, each over every block of a fresh store (30,000 rows for pipeline.yaml), in the pass's batches:
- layout: `Layout.overlapping` of every block (once per block since issue 11d: the DataLoader's keys hand each
  block's span on to the loop; twice before);
- fetch: the samples by (split, sample id) through `batch_loader` (the DataLoader, in this process as with
  data.num_workers 0);
- forward: `teacher(x)` with the cached features' hooks, under inference_mode, inputs already fetched
  (the bare forward of bench.teacher_pass, plus the hooks);
- targets: `teacher_rows` (relative top-k + lse) per batch, the block's rows concatenated, `encode_targets`,
  features cast, `to_host` (ids coded);
- write: `CacheWriter.write_block` (zarr chunks, sha256, samples.parquet part, marker) of every block;
- finalize: `CacheWriter.finalize` of that store (every block's files fsynced, samples.parquet assembled from the
  parts, `complete: true`): once per store, and not part of bench.teacher_pass's ratio;
- whole pass: `cachepass.teacher_pass` (the writes overlap the next block's compute in a writer thread).
Every `os.fsync` is counted and timed (since issue 11d the writer syncs a store's blocks once, at finalize;
before, each chunk, samples part and marker, and the folder after each rename, per block); `--no-fsync` replaces
it by a no-op in this process to show what durability costs — never a setting of the pipeline.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.common import apply_threads, bench_args, config
from kd_pipeline.cachepass import build_manifest, probe_features, teacher_pass
from kd_pipeline.data import batch_loader, batches_of
from kd_pipeline.hooks import capture
from kd_pipeline.models import build_model
from kd_pipeline.prepare import open_samples, prepare, samples_per_batch, store_layout
from kd_pipeline.store import CacheWriter
from kd_pipeline.store.values import encode_targets, to_host
from kd_pipeline.store.samples_parts import span_table
from kd_pipeline.targets import teacher_rows


PART: list[str | None] = [None]  # the part being timed


def measure(cfg, repeats: int, workdir: Path) -> dict[str, float]:
    """-> part -> median seconds per pass over the store's rows."""
    data = prepare(cfg)
    samples = open_samples(cfg, data["store_splits"])
    layout, kind, feats = store_layout(cfg, data, samples), samples.kind, cfg.cache.features
    cpu = torch.device("cpu")
    teacher = build_model(cfg.teacher, cfg.data.num_classes, "teacher").eval().requires_grad_(False)
    m = build_manifest(cfg, data, layout, "0" * 64, probe_features(teacher, samples, kind, feats, cpu, torch.float32))
    bs = samples_per_batch(cfg, cfg.cache.batch_size)
    blocks = [(b * m.chunk_rows, min((b + 1) * m.chunk_rows, m.num_rows)) for b in range(m.num_blocks)]
    spans = [layout.overlapping(a, z) for a, z in blocks]
    keys = [(s.split[i : i + bs], s.sample_id[i : i + bs]) for s in spans for i in range(0, len(s), bs)]
    xs = [samples.__getitems__(k) for k in keys]
    n_store = [0]

    def fresh() -> CacheWriter:
        n_store[0] += 1
        shutil.rmtree(workdir / f"s{n_store[0] - 1}", ignore_errors=True)
        return CacheWriter.open(workdir / f"s{n_store[0]}", m)

    def layout_part():
        for a, z in blocks:
            layout.overlapping(a, z)

    def fetch_part():
        for _ in batches_of(batch_loader(samples, iter(keys), cfg.data.num_workers)):
            pass

    @torch.inference_mode()
    def forward_part(out_rows: list | None = None):
        with capture(teacher, feats, "cache.features") as out:
            for batch in xs:
                z = kind.rows(teacher(batch["x"]), batch)
                if out_rows is not None:
                    out_rows.append((z, {f"features/{n}": kind.rows(out[n], batch) for n in feats}))

    done = []
    forward_part(done)  # the teacher's outputs, kept for the targets part

    @torch.inference_mode()
    def targets_part() -> list:
        arrays, i = [], 0
        for s, (a, z) in zip(spans, blocks):
            parts = []
            for _ in range(0, len(s), bs):
                logits, f = done[i]
                parts.append({**teacher_rows(logits, m), **f})
                i += 1
            rows = {k: torch.cat([p[k] for p in parts])[a - int(s.row0[0]) : z - int(s.row0[0])] for k in parts[0]}
            block = encode_targets({k: rows.pop(k) for k in ("values", "ids", "lse") if k in rows}, m)
            block.update({k: v.to(getattr(torch, m.array_specs()[k][1])) for k, v in rows.items()})
            arrays.append(to_host(block, m))
        return arrays

    arrays = targets_part()
    tables = [span_table(layout.names, s.take(s.row0 >= a), None if kind.name == "sequence" else
                         samples.__getitems__((s.split, s.sample_id))["y"].numpy()[s.row0 >= a]) for s, (a, z) in zip(spans, blocks)]
    writer = [fresh()]

    def write_part():
        for b, (arr, t) in enumerate(zip(arrays, tables)):
            writer[0].write_block(b, arr, t)

    def finalize_part():  # the store the write part just wrote
        writer[0].finalize()

    def whole_pass():
        teacher_pass(teacher, writer[0], layout, samples, kind, feats, bs, cpu, torch.float32, cfg.data.num_workers, cfg.seed)
        writer[0].close()

    parts = {"layout": (layout_part, None), "fetch": (fetch_part, None), "forward": (forward_part, None),
             "targets": (targets_part, None), "write": (write_part, fresh), "finalize": (finalize_part, None),
             "whole pass": (whole_pass, fresh)}
    times: dict[str, list[float]] = {k: [] for k in parts}
    for _ in range(repeats):
        for name, (fn, setup) in parts.items():
            if setup is not None:
                writer[0] = setup()
            PART[0] = name  # what os.fsync calls are charged to (main)
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            PART[0] = None
    return {k: statistics.median(v) for k, v in times.items()} | {"rows": m.num_rows}


def main(argv: list[str] | None = None) -> None:
    ap = bench_args(__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-fsync", action="store_true", help="os.fsync a no-op in this process (diagnosis only)")
    a = ap.parse_args(argv)
    apply_threads(a)
    fsync, calls = os.fsync, {}  # part -> [calls, seconds]

    def timed_fsync(fd: int) -> None:
        t0 = time.perf_counter()
        if not a.no_fsync:
            fsync(fd)
        c = calls.setdefault(PART[0], [0, 0.0])
        c[0] += 1
        c[1] += time.perf_counter() - t0

    os.fsync = timed_fsync
    with tempfile.TemporaryDirectory(prefix="kd-bench-parts-") as tmp:
        cfg = config(*a.sets, f"out={Path(tmp) / 'run'}")
        r = measure(cfg, a.repeats, Path(tmp))
    rows = r.pop("rows")
    print(f"teacher {cfg.teacher.kwargs}, features {dict(cfg.cache.features) or 'none'}, {rows:,} rows, batch {cfg.cache.batch_size}, "
          f"median of {a.repeats}, one thread, parts run one after another:")
    for name, t in r.items():
        print(f"  {name:10s} {1e3 * t:8.1f} ms  ({1e6 * t / rows:6.2f} µs/row, {t / r['forward']:.2f} x forward)")
    print(f"  layout + fetch + forward + targets + write = {1e3 * (r['layout'] + r['fetch'] + r['forward'] + r['targets'] + r['write']):.1f} ms")
    for name in ("write", "finalize", "whole pass"):
        n, t = calls.get(name, [0, 0.0])
        print(f"  os.fsync{' (no-op)' if a.no_fsync else ''} in {name}: {n / a.repeats:.0f} calls, {1e3 * t / a.repeats:.1f} ms per store")


if __name__ == "__main__":
    main()
