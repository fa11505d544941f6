"""Teacher pass benchmark: cache pass rows/s ÷ bare teacher forward rows/s, same teacher, samples and batches.

    .venv/bin/python -m bench.teacher_pass          # pipeline.yaml's teacher, without features, and 256 channels
    .venv/bin/python -m bench.teacher_pass --only default --rounds 7

Real pass: `kd_pipeline.cachepass.teacher_pass` into a fresh store (data prepared by the prepare_data stage's
`prepare`, store created before the clock starts, as the cache_teacher stage does after loading data and
checkpoint) — samples fetched by id through the DataLoader, forward under inference_mode, relative top-k +
lse, features hook, encode to the store's dtypes, block writes + samples.parquet parts + markers in the writer
thread. Not timed: `finalize` (samples.parquet assembled from the parts, once per store). Bare: `teacher(x)`
under inference_mode over the same samples in the same batches, inputs fetched beforehand, nothing else. The
two alternate for `rounds` rounds; the median per-round ratio is reported. Goal >= 0.97.
The teacher is freshly initialised (speed does not depend on its weights); the store holds pipeline.yaml's
MNIST-1D train + transfer rows and, after them, the test split's (30,000 x 40 in all).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from bench.common import alternate, apply_threads, bench_args, config, median_ratio, summary, verdict
from kd_pipeline.cachepass import build_manifest, probe_features, teacher_pass
from kd_pipeline.config import PipelineConfig
from kd_pipeline.distributed import Dist, device_for
from kd_pipeline.models import build_model
from kd_pipeline.prepare import open_samples, prepare, samples_per_batch, store_layout
from kd_pipeline.store import CacheWriter

GOAL = 0.97


def measure(cfg: PipelineConfig, rounds: int, workdir: Path) -> dict:
    """-> {"ratio", "rates": {"cache pass": [...], "bare forward": [...]}} for cfg's teacher and data."""
    torch.manual_seed(0)
    data = prepare(cfg)  # the prepare_data stage's work, into cfg.out_dir/data
    samples = open_samples(cfg, data["store_splits"])
    layout = store_layout(cfg, data, samples)
    device, dtype = device_for(Dist(), cfg.cache.device), getattr(torch, cfg.cache.teacher_dtype)
    teacher = build_model(cfg.teacher, cfg.data.num_classes, "teacher").to(device=device, dtype=dtype).eval().requires_grad_(False)
    feats = cfg.cache.features
    manifest = build_manifest(cfg, data, layout, "0" * 64, probe_features(teacher, samples, samples.kind, feats, device, dtype))
    bs = samples_per_batch(cfg, cfg.cache.batch_size)
    n = [0]

    def fresh_writer() -> CacheWriter:
        n[0] += 1
        shutil.rmtree(workdir / f"store-{n[0] - 1}", ignore_errors=True)  # keep one store on disk at a time
        return CacheWriter.open(workdir / f"store-{n[0]}", manifest)

    writer = [fresh_writer()]

    def cache_pass() -> int:
        rows = teacher_pass(teacher, writer[0], layout, samples, samples.kind, feats, bs, device, dtype, cfg.data.num_workers, cfg.seed)
        writer[0].close()
        return rows

    # the pass's batches (never straddling a block), fetched once for the bare forward
    xs = []
    for b in range(manifest.num_blocks):
        s = layout.overlapping(*writer[0].block_rows(b))
        for a in range(0, len(s), bs):
            xs.append(samples.__getitems__((s.split[a : a + bs], s.sample_id[a : a + bs]))["x"])

    @torch.inference_mode()
    def bare_forward() -> int:
        for x in xs:
            x = x.to(device)
            teacher(x.to(dtype) if x.is_floating_point() else x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return layout.num_rows

    bare_forward()  # warm-up (allocator, thread pool, zarr codecs), not timed
    cache_pass()

    def new_store() -> None:
        writer[0] = fresh_writer()

    rates = alternate({"cache pass": cache_pass, "bare forward": bare_forward}, rounds, setup={"cache pass": new_store})
    return {"ratio": median_ratio(rates, "cache pass", "bare forward"), "rates": rates, "rows": layout.num_rows}


VARIANTS = {  # label -> overrides of pipeline.yaml
    "default": [],  # pipeline.yaml: 32-channel CNN, penultimate features cached
    "no-features": ["cache.features={}"],  # same teacher, top-k + lse only
    "256ch": ["teacher.kwargs.channels=256"],  # a teacher-dominated regime (64x the conv FLOPs per row)
}


def run(variants: dict[str, list[str]], rounds: int, sets: list[str] = (), log=print) -> dict[str, dict]:
    out = {}
    for label, extra in variants.items():
        with tempfile.TemporaryDirectory(prefix="kd-bench-pass-") as tmp:
            cfg = config(*sets, *extra, f"out={Path(tmp) / 'run'}")
            r = measure(cfg, rounds, Path(tmp))
        params = sum(p.numel() for p in build_model(cfg.teacher, cfg.data.num_classes).parameters())
        feats = ", ".join(f"{n}={m}" for n, m in cfg.cache.features.items()) or "none"
        log(f"{label}: {cfg.teacher.kwargs} ({params:,} params), {r['rows']:,} rows, batch {cfg.cache.batch_size}, "
            f"features {feats}, {rounds} rounds: {summary(r['rates'])}")
        log(f"  cache pass / bare forward = {r['ratio']:.3f}  {verdict(r['ratio'], GOAL)}")
        out[label] = r
    return out


def main(argv: list[str] | None = None) -> None:
    ap = bench_args(__doc__)
    ap.add_argument("--only", choices=list(VARIANTS), action="append", help="run only this variant (repeatable)")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args(argv)
    apply_threads(a)
    run({k: VARIANTS[k] for k in a.only} if a.only else VARIANTS, a.rounds, a.sets)


if __name__ == "__main__":
    main()
