"""LM stage 2: train the teacher on the train split's samples (next-token CE) -> <out>/teacher.safetensors.
Without `teacher_train` the teacher is used as its factory builds it (e.g. a pretrained HF folder)."""

from kd_pipeline.config import PipelineConfig
from kd_pipeline.lm.common import train_lm

NAME = "lm_train_teacher"
PARAMS = ("seed", "data", "teacher", "teacher_train", "sequence")


def deps(cfg: PipelineConfig):
    return [cfg.out_dir / "tokens"]


def outs(cfg: PipelineConfig):
    return [cfg.out_dir / "teacher.safetensors"] if cfg.teacher_train is not None else []


def run(cfg: PipelineConfig) -> None:
    if cfg.teacher_train is None:
        return
    train_lm(cfg, cfg.teacher, cfg.teacher_train, NAME, outs(cfg)[0])
