"""Stage 3: run the frozen teacher once over the store's samples (the training splits, then the test split for
evaluation) into the store. Resumable: blocks already marked finished are skipped. Under torchrun, rank r writes
blocks b % world == r and rank 0 finalises (samples.parquet, complete: true) once every block is in.
Writes only a store this run folder's own pass created (kd_pipeline/ownership.py): any other store at
cache.path is refused, before the teacher is even trained (preflight)."""

import time

import torch

from kd_pipeline.cachepass import build_manifest, probe_features, teacher_pass
from kd_pipeline.checkpoint import load_teacher
from kd_pipeline.config import PipelineConfig
from kd_pipeline.consumer import config_differences
from kd_pipeline.distributed import device_for
from kd_pipeline.errors import StoreError
from kd_pipeline.lm.reconstruction import measure_reconstruction
from kd_pipeline.models import check_output
from kd_pipeline.ownership import RunOwner
from kd_pipeline.prepare import SUMMARY, data_dir, load_summary, open_samples, samples_per_batch, store_layout
from kd_pipeline.store import CacheWriter
from kd_pipeline.store.files import refuse_foreign
from kd_pipeline.store.location import FsPath
from kd_pipeline.store.writer import existing_manifest
from kd_pipeline.views import Views, build_views

NAME = "cache_teacher"
PARAMS = ("kind", "data", "teacher", "cache", "sequence")
EVERY_RANK = True  # each rank writes its share of the blocks
NEEDS_TEACHER = True


def deps(cfg: PipelineConfig):
    return [data_dir(cfg) / SUMMARY] + ([cfg.out_dir / "teacher.safetensors"] if cfg.teacher_train is not None else [])


def outs(cfg: PipelineConfig):
    return [cfg.cache_path]


def preflight(cfg: PipelineConfig) -> None:
    """Before any stage runs: a read-only store location, a folder that is not a store, or a store this run folder
    did not create, is refused."""
    path = cfg.cache_path
    if isinstance(path, FsPath):
        path._writable()
    existing = existing_manifest(path)
    if existing is None and not isinstance(path, FsPath):
        refuse_foreign(path)
    owner = RunOwner(cfg.out_dir, cfg.teacher)
    if existing is not None and not owner.owns(path, existing):
        raise StoreError(owner.refusal(path, existing, None, config_differences(cfg, existing)))


def run(cfg: PipelineConfig, dist) -> None:
    summary = load_summary(cfg)
    samples = open_samples(cfg, summary["store_splits"])
    layout = store_layout(cfg, summary, samples)
    teacher, sha = load_teacher(cfg)
    check_output(teacher, samples.head(), samples.kind, cfg.data.num_classes, "teacher")
    device, dtype = device_for(dist, cfg.cache.device), getattr(torch, cfg.cache.teacher_dtype)
    teacher = teacher.to(device=device, dtype=dtype)
    got = build_views(cfg)  # augmented views (cache.views): V rows per training sample
    views = Views(got[0], cfg.cache.views.count, cfg.seed, layout.names.index(cfg.data.test_split)) if got else None
    shapes = probe_features(teacher, samples, samples.kind, cfg.cache.features, device, dtype, views)
    manifest = build_manifest(cfg, summary, layout, sha, shapes, got and got[1])
    # rank 0 creates (or resumes) the store first; the others then open what it made
    writer = dist.together(lambda: CacheWriter.open(cfg.cache_path, manifest, shard=dist.rank, num_shards=dist.world,
                                                       owner=RunOwner(cfg.out_dir, cfg.teacher)), first=0)
    with writer:
        for old in writer.lock.taken_over:
            print(f"cache_teacher: took over the stale lock of pid {old.get('pid')} on {old.get('host')} (started {old.get('started_at')})")
        if writer.dropped:  # a power loss before the store was finalized (docs/integrity.md, "What is synced when")
            print(f"cache_teacher: {len(writer.dropped)} finished block(s) did not match their markers (first: block {writer.dropped[0]}): recomputing them")
        todo = sum(stop - start for start, stop in map(writer.block_rows, writer.pending_blocks()))  # all ranks' rows
        t0 = time.perf_counter()
        dist.together(lambda: teacher_pass(teacher, writer, layout, samples, samples.kind, cfg.cache.features,
                                           samples_per_batch(cfg, cfg.cache.batch_size), device, dtype, cfg.data.num_workers, cfg.seed, dist.rank, dist.world, views))
        if dist.is_main:
            # every rank has finished here (`together` syncs them): the pass's rows/s without start-up (bench/processes.py)
            print(f"cache_teacher: teacher pass: {todo} rows in {time.perf_counter() - t0:.3f} s, {dist.world} process(es)")
            if cfg.kind == "sequence" and cfg.data.val_split and not writer.manifest.complete:
                recon = measure_reconstruction(teacher, writer.manifest, open_samples(cfg, [cfg.data.val_split]), cfg.sequence.recon_tokens,
                                               cfg.cache.batch_size, device, dtype, cfg.seed)
                writer.manifest = writer.manifest.model_copy(update={"reconstruction_kl": recon})
            writer.finalize()
