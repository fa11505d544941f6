"""Stage 5: the same student on hard labels only (labelled split) -> <out>/baseline.safetensors."""

from kd_pipeline.config import PipelineConfig
from kd_pipeline.hardlabel import train_hard_labels
from kd_pipeline.prepare import SUMMARY, data_dir

NAME = "train_baseline"
PARAMS = ("seed", "kind", "data", "student", "student_train", "sequence")
EVERY_RANK = True  # DistributedDataParallel under torchrun


def deps(cfg: PipelineConfig):
    return [data_dir(cfg) / SUMMARY]


def outs(cfg: PipelineConfig):
    return [cfg.out_dir / "baseline.safetensors"]


def run(cfg: PipelineConfig, dist) -> None:
    train_hard_labels(cfg, cfg.student, cfg.student_train, NAME, outs(cfg)[0], "student", dist)
