"""Self-distillation: born-again networks (Furlanello, Lipton, Tschannen, Itti, Anandkumar, "Born Again Neural
Networks", ICML 2018, arXiv 1805.04770).

Generation 0 is the student's model trained on hard labels: the baseline student (<out>/baseline.safetensors,
same model, seed and budget). Generation g + 1, the same model again, is distilled from generation g's outputs:
generation g runs once over the store's samples as the "teacher" of a normal teacher pass into
<out>/generations/g<g>/cache (cache.top_k, temperatures, chunking and views; no features: the student's
modules are not the teacher's), and generation g + 1 trains from that store exactly like the KD student
(distill.alpha, temperature) into <out>/generations/g<g+1>/student.safetensors. Every generation's store
is kept; the evaluate stage reports every generation's accuracy (metrics.json: born_again_g<k>).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .cachepass import build_manifest, teacher_pass
from .checkpoint import file_sha256, load_model
from .distributed import Dist, device_for
from .models import build_model
from .prepare import load_summary, open_samples, samples_per_batch, store_layout
from .store import CacheWriter
from .store.format import TeacherInfo
from .student import train_from_store
from .views import Views, build_views


def generation_dir(cfg, g: int) -> Path:
    return cfg.out_dir / "generations" / f"g{g}"


def generation_checkpoint(cfg, g: int) -> Path:
    """Generation g's weights; generation 0 is the baseline student."""
    return cfg.out_dir / "baseline.safetensors" if g == 0 else generation_dir(cfg, g) / "student.safetensors"


def generation_store(cfg, g: int) -> Path:
    """The store of generation g's outputs, which generation g + 1 learns from."""
    return generation_dir(cfg, g) / "cache"


def run_generations(cfg, dist: Dist = Dist()) -> None:
    """Generations 1..distill.generations, each cached from the one before and distilled from its store."""
    for g in range(1, cfg.distill.generations + 1):
        cache_generation(cfg, g - 1, dist)
        train_from_store(cfg, generation_store(cfg, g - 1), generation_checkpoint(cfg, g), f"born_again_g{g}", dist)


def cache_generation(cfg, g: int, dist: Dist = Dist()) -> None:
    """Generation g's teacher pass into generation_store(cfg, g): rank r of torchrun writes blocks b % world == r,
    rank 0 finalises. A finished store made by the same weights is kept (its manifest names their sha256)."""
    ckpt = generation_checkpoint(cfg, g)
    model = load_model(build_model(cfg.student, cfg.data.num_classes, "student"), ckpt, f"born-again generation {g}")
    summary = load_summary(cfg)
    samples = open_samples(cfg, summary["store_splits"])
    layout = store_layout(cfg, summary, samples)
    got = build_views(cfg)
    views = Views(got[0], cfg.cache.views.count, cfg.seed, layout.names.index(cfg.data.test_split)) if got else None
    teacher = TeacherInfo(factory=cfg.student.factory, kwargs=dict(cfg.student.kwargs), checkpoint_sha256=file_sha256(ckpt))
    manifest = build_manifest(cfg, summary, layout, teacher.checkpoint_sha256, {}, got and got[1]).model_copy(update={"teacher": teacher})
    device = device_for(dist, cfg.cache.device)
    writer = dist.together(lambda: CacheWriter.open(generation_store(cfg, g), manifest, shard=dist.rank, num_shards=dist.world), first=0)
    with writer:
        dist.together(lambda: teacher_pass(model, writer, layout, samples, samples.kind, {}, samples_per_batch(cfg, cfg.cache.batch_size), device, torch.float32,
                                           cfg.data.num_workers, cfg.seed, dist.rank, dist.world, views))
        if dist.is_main:
            writer.finalize()
    dist.barrier()
