"""Teacher pass benchmark: cache pass rows/s ÷ bare teacher forward rows/s, same teacher, data and batch size.

    .venv/bin/python -m bench.teacher_pass          # pipeline.yaml's teacher, without features, and 256 channels
    .venv/bin/python -m bench.teacher_pass --only default --rounds 7

Real pass: `kd_pipeline.cachepass.run_teacher_pass` into a fresh store (created before the clock starts, as
the stage does after loading data and checkpoint) — forward, top-k + lse, features hook, block writes in the
writer thread, markers. Bare: `teacher(x)` over the same inputs in the same batches under no_grad, nothing
else. The two alternate for `rounds` rounds; the median per-round ratio is reported. Goal >= 0.97.
The teacher is freshly initialised (speed does not depend on its weights); inputs are pipeline.yaml's
cached rows (MNIST-1D train + transfer, 24,000 x 40).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from bench.common import alternate, apply_threads, bench_args, config, median_ratio, summary, verdict
from kd_pipeline.cachepass import build_manifest, probe_features, resolve_device, run_teacher_pass
from kd_pipeline.config import PipelineConfig
from kd_pipeline.data import load_splits
from kd_pipeline.models import build_model
from kd_pipeline.store import CacheWriter

GOAL = 0.97


def measure(cfg: PipelineConfig, rounds: int, workdir: Path) -> dict:
    """-> {"ratio", "rates": {"cache pass": [...], "bare forward": [...]}} for cfg's teacher and data."""
    torch.manual_seed(0)
    splits = load_splits(cfg.data, cfg.cached_splits)
    inputs = torch.cat([x for x, _ in splits.values()])  # (R, 40) in store row order, as the stage builds it
    device = resolve_device(cfg.cache.device)
    dtype = getattr(torch, cfg.cache.teacher_dtype)
    teacher = build_model(cfg.teacher, cfg.data.num_classes).to(device=device, dtype=dtype).eval().requires_grad_(False)
    shapes = probe_features(teacher, inputs, cfg.cache.features, device, dtype)
    manifest = build_manifest(cfg, splits, "0" * 64, shapes)
    bs = cfg.cache.batch_size
    n = [0]

    def fresh_writer() -> CacheWriter:
        n[0] += 1
        path = workdir / f"store-{n[0]}"
        shutil.rmtree(workdir / f"store-{n[0] - 1}", ignore_errors=True)  # keep one store on disk at a time
        return CacheWriter.open(path, manifest)

    writer = [fresh_writer()]

    def cache_pass() -> int:
        return run_teacher_pass(teacher, inputs, writer[0], cfg.cache.features, bs, device, dtype)

    @torch.no_grad()
    def bare_forward() -> int:
        for i in range(0, len(inputs), bs):
            teacher(inputs[i : i + bs].to(device, dtype))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return len(inputs)

    bare_forward()  # warm-up (allocator, thread pool, zarr codecs), not timed
    cache_pass()

    def new_store() -> None:
        writer[0] = fresh_writer()

    rates = alternate({"cache pass": cache_pass, "bare forward": bare_forward}, rounds, setup={"cache pass": new_store})
    shutil.rmtree(workdir, ignore_errors=True)
    return {"ratio": median_ratio(rates, "cache pass", "bare forward"), "rates": rates}


VARIANTS = {  # label -> overrides of pipeline.yaml
    "default": [],  # pipeline.yaml: 32-channel CNN, penultimate features cached
    "no-features": ["cache.features={}"],  # same teacher, top-k + lse only
    "256ch": ["teacher.kwargs.channels=256"],  # a teacher-dominated regime (64x the conv FLOPs per row)
}


def run(variants: dict[str, list[str]], rounds: int, sets: list[str] = (), log=print) -> dict[str, dict]:
    out = {}
    for label, extra in variants.items():
        cfg = config(*sets, *extra)
        with tempfile.TemporaryDirectory(prefix="kd-bench-pass-") as tmp:
            r = measure(cfg, rounds, Path(tmp))
        params = sum(p.numel() for p in build_model(cfg.teacher, cfg.data.num_classes).parameters())
        feats = ", ".join(f"{n}={m}" for n, m in cfg.cache.features.items()) or "none"
        log(f"{label}: {cfg.teacher.kwargs} ({params:,} params), batch {cfg.cache.batch_size}, features {feats}, "
            f"{rounds} rounds: {summary(r['rates'])}")
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
