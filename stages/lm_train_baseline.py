"""LM stage 5: the same student on hard labels only (next-token CE) -> <out>/baseline.safetensors."""

from kd_pipeline.config import PipelineConfig
from kd_pipeline.lm.common import train_lm

NAME = "lm_train_baseline"
PARAMS = ("seed", "data", "student", "student_train", "sequence")


def deps(cfg: PipelineConfig):
    return [cfg.out_dir / "tokens"]


def outs(cfg: PipelineConfig):
    return [cfg.out_dir / "baseline.safetensors"]


def run(cfg: PipelineConfig) -> None:
    train_lm(cfg, cfg.student, cfg.student_train, NAME, outs(cfg)[0])
