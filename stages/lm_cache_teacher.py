"""LM stage 3: the frozen teacher over every token of the train split's samples -> the sequence store
(<out>/cache by default), with the input tokens, so students need nothing else. Then the reconstruction KL
is measured on held-out validation tokens and recorded in the manifest. Resumable by block."""

import torch

from kd_pipeline.cachepass import resolve_device
from kd_pipeline.config import PipelineConfig
from kd_pipeline.lm.common import load_teacher
from kd_pipeline.lm.cachepass import measure_reconstruction, sequence_pass
from kd_pipeline.lm.evaluate import state_sha256
from kd_pipeline.lm.manifest import sequence_manifest, sequence_samples_table
from kd_pipeline.lm.tokenizer import load_split, windows
from kd_pipeline.store import CacheWriter
from kd_pipeline.store.format import ReconstructionKL

NAME = "lm_cache_teacher"
PARAMS = ("seed", "data", "teacher", "cache", "sequence")


def deps(cfg: PipelineConfig):
    return [cfg.out_dir / "tokens"] + ([cfg.out_dir / "teacher.safetensors"] if cfg.teacher_train is not None else [])


def outs(cfg: PipelineConfig):
    return [cfg.cache_path]


def run(cfg: PipelineConfig, shard: int = 0, num_shards: int = 1) -> None:
    teacher = load_teacher(cfg)
    device, dtype = resolve_device(cfg.cache.device), getattr(torch, cfg.cache.teacher_dtype)
    teacher = teacher.to(device=device, dtype=dtype)
    V, ctx, bs = cfg.data.num_classes, cfg.sequence.context, max(1, cfg.cache.batch_size // cfg.sequence.context)
    ids, offsets = load_split(cfg.out_dir / "tokens", cfg.data.train_split, V)
    starts, lengths = windows(offsets, ctx)
    manifest = sequence_manifest(cfg, cfg.data.train_split, ids, starts, lengths, state_sha256(teacher))
    writer = CacheWriter.open(cfg.cache_path, manifest)
    sequence_pass(teacher, writer, ids, starts, lengths, bs, device, dtype, cfg.seed, shard, num_shards)
    if shard != 0:
        return
    vids, voff = load_split(cfg.out_dir / "tokens", cfg.sequence.val_split, V)
    vs, vl = windows(voff, ctx)
    recon = measure_reconstruction(teacher, writer.manifest, vids, vs, vl, cfg.sequence.recon_tokens, bs, device, dtype, cfg.seed)
    if recon is not None:
        writer.manifest = writer.manifest.model_copy(update={"reconstruction_kl": ReconstructionKL(**recon)})
    writer.finalize(sequence_samples_table(cfg.data.train_split, lengths))
