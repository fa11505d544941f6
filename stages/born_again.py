"""Stage 6 (with distill.generations > 0): born-again self-distillation. Generation 0 is the baseline student;
generation g + 1 is distilled from generation g's store -> <out>/generations/g<k>/{cache, student.safetensors}
(kd_pipeline/bornagain.py). Runs only with distill.generations."""

from kd_pipeline.bornagain import generation_checkpoint, generation_store, run_generations
from kd_pipeline.config import PipelineConfig
from kd_pipeline.prepare import SUMMARY, data_dir

NAME = "born_again"
PARAMS = ("seed", "kind", "data", "student", "student_train", "cache", "distill")
EVERY_RANK = True  # teacher passes sharded between ranks, DistributedDataParallel training


def enabled(cfg: PipelineConfig) -> bool:
    return cfg.distill.generations > 0


def deps(cfg: PipelineConfig):
    return [data_dir(cfg) / SUMMARY, generation_checkpoint(cfg, 0)]


def outs(cfg: PipelineConfig):
    G = cfg.distill.generations
    return [p for g in range(1, G + 1) for p in (generation_store(cfg, g - 1), generation_checkpoint(cfg, g))]


def run(cfg: PipelineConfig, dist) -> None:
    run_generations(cfg, dist)
