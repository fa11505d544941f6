"""Stage 1: train the teacher on the labelled split (hard labels) -> <out>/teacher.safetensors."""

from kd_pipeline.config import PipelineConfig
from kd_pipeline.hardlabel import train_hard_labels

NAME = "train_teacher"
PARAMS = ("seed", "data", "teacher", "teacher_train")


def deps(cfg: PipelineConfig):
    return []


def outs(cfg: PipelineConfig):
    return [cfg.out_dir / "teacher.safetensors"]


def run(cfg: PipelineConfig) -> None:
    train_hard_labels(cfg, cfg.teacher, cfg.teacher_train, NAME, outs(cfg)[0])
