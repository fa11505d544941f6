"""Stage 2: run the frozen teacher once over the train + transfer splits into the store.

Resumable: blocks already marked finished are skipped. `shard`/`num_shards` let n processes each write
disjoint whole blocks; shard 0 finalises (samples.parquet, complete: true) once every block is in.
"""

import torch

from kd_pipeline.cachepass import build_manifest, probe_features, resolve_device, run_teacher_pass
from kd_pipeline.checkpoint import file_sha256, load_model
from kd_pipeline.config import PipelineConfig
from kd_pipeline.data import load_splits
from kd_pipeline.models import build_model
from kd_pipeline.store import CacheWriter
from kd_pipeline.store.writer import samples_table

NAME = "cache_teacher"
PARAMS = ("data", "teacher", "cache")


def deps(cfg: PipelineConfig):
    return [cfg.out_dir / "teacher.safetensors"]


def outs(cfg: PipelineConfig):
    return [cfg.cache_path]


def run(cfg: PipelineConfig, shard: int = 0, num_shards: int = 1) -> None:
    ckpt = deps(cfg)[0]
    teacher = load_model(build_model(cfg.teacher, cfg.data.num_classes), ckpt, "teacher")
    splits = load_splits(cfg.data, cfg.cached_splits)
    inputs = torch.cat([x for x, _ in splits.values()])  # (R, ...) in store row order
    device = resolve_device(cfg.cache.device)
    dtype = getattr(torch, cfg.cache.teacher_dtype)
    teacher = teacher.to(device=device, dtype=dtype).eval()
    shapes = probe_features(teacher, inputs, cfg.cache.features, device, dtype)
    manifest = build_manifest(cfg, splits, file_sha256(ckpt), shapes)
    with CacheWriter.open(cfg.cache_path, manifest, shard=shard, num_shards=num_shards) as writer:
        for old in writer.lock.taken_over:
            print(f"cache_teacher: took over the stale lock of pid {old.get('pid')} on {old.get('host')} (started {old.get('started_at')})")
        run_teacher_pass(teacher, inputs, writer, cfg.cache.features, cfg.cache.batch_size, device, dtype, shard, num_shards)
        if shard == 0:
            writer.finalize(samples_table({n: len(x) for n, (x, _) in splits.items()}, {n: y.numpy() for n, (_, y) in splits.items()}))
