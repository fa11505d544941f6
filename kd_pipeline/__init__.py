"""kd-pipeline: offline knowledge distillation through a teacher-logit cache."""

__version__ = "0.2.0"
