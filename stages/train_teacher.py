"""Stage 2: train the teacher on the labelled split (hard labels) -> <out>/teacher.safetensors.
Without `teacher_train` the teacher is used as its factory builds it (e.g. a pretrained Hugging Face folder)."""

from kd_pipeline.config import PipelineConfig
from kd_pipeline.hardlabel import train_hard_labels
from kd_pipeline.prepare import SUMMARY, data_dir

NAME = "train_teacher"
PARAMS = ("seed", "kind", "data", "teacher", "teacher_train", "sequence")
EVERY_RANK = True  # DistributedDataParallel under torchrun
NEEDS_TEACHER = True


def deps(cfg: PipelineConfig):
    return [data_dir(cfg) / SUMMARY]


def outs(cfg: PipelineConfig):
    return [cfg.out_dir / "teacher.safetensors"] if cfg.teacher_train is not None else []


def run(cfg: PipelineConfig, dist) -> None:
    if cfg.teacher_train is not None:
        train_hard_labels(cfg, cfg.teacher, cfg.teacher_train, NAME, outs(cfg)[0], "teacher", dist)
