"""Stage 4: the same student on hard labels only (labelled split) -> <out>/baseline.safetensors."""

from kd_pipeline.config import PipelineConfig
from kd_pipeline.hardlabel import train_hard_labels

NAME = "train_baseline"
PARAMS = ("seed", "data", "student", "student_train")


def deps(cfg: PipelineConfig):
    return []


def outs(cfg: PipelineConfig):
    return [cfg.out_dir / "baseline.safetensors"]


def run(cfg: PipelineConfig) -> None:
    train_hard_labels(cfg, cfg.student, cfg.student_train, NAME, outs(cfg)[0])
