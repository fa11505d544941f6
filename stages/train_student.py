"""Stage 4: train the student -> <out>/student.safetensors, as `distill.mode` says (docs/distillation-types.md).

cached (default): from the store alone, never building or loading the teacher: k, temperatures and
num_classes come from the store's manifest, targets from its arrays, streamed in shuffled whole blocks.
Inputs come from the dataset by sample id (classification; augmented views replayed from their stored seeds)
or from the store itself (sequence: no corpus, no tokenizer needed; a student with its own tokenizer,
sequence.student_tokenizer, takes its tokens of each stored sample from the data and learns through the ULD
loss, aligned by character offsets: kd_pipeline/uld.py). With `distill.teachers`, the store is
their mixture, <out>/ensemble. online / mutual: the live teacher every step, or two students learning from
each other (kd_pipeline/live.py).
"""

from kd_pipeline.config import PipelineConfig
from kd_pipeline.live import peer_checkpoint, train_live
from kd_pipeline.prepare import SUMMARY, data_dir, load_summary
from kd_pipeline.store.location import as_location
from kd_pipeline.student import PARAMS, build_ensemble, cross_tokenizer, student_store, train_from_store

NAME = "train_student"
EVERY_RANK = True  # DistributedDataParallel under torchrun


def deps(cfg: PipelineConfig):
    data = [data_dir(cfg) / SUMMARY] if cfg.kind == "classification" or cross_tokenizer(cfg) else []
    if cfg.distill.mode == "online":
        return data + [cfg.out_dir / "teacher.safetensors"]
    if cfg.distill.mode == "mutual":
        return data
    return ([as_location(t.path) for t in cfg.distill.teachers] or [cfg.cache_path]) + data


def outs(cfg: PipelineConfig):
    return [cfg.out_dir / "student.safetensors"] + ([peer_checkpoint(cfg)] if cfg.distill.mode == "mutual" else [])


def run(cfg: PipelineConfig, dist) -> None:
    if cfg.distill.mode != "cached":
        return train_live(cfg, outs(cfg)[0], NAME, dist)
    if cfg.distill.teachers:
        build_ensemble(cfg, load_summary(cfg) if cfg.kind == "classification" else None, dist)
        return train_from_store(cfg, student_store(cfg), outs(cfg)[0], NAME, dist)
    train_from_store(cfg, cfg.cache_path, outs(cfg)[0], NAME, dist, cfg.out_dir / "teacher.safetensors")
