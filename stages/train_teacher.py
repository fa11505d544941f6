"""Stage 1: train the teacher on the labelled split (hard labels) -> <out>/teacher.safetensors."""

from kd_pipeline.checkpoint import save_model
from kd_pipeline.config import PipelineConfig
from kd_pipeline.data import load_splits
from kd_pipeline.distill import ce_step
from kd_pipeline.models import build_model
from kd_pipeline.training import fit, random_batches, seed_everything, stage_checkpoint

NAME = "train_teacher"
PARAMS = ("seed", "data", "teacher", "teacher_train")


def deps(cfg: PipelineConfig):
    return []


def outs(cfg: PipelineConfig):
    return [cfg.out_dir / "teacher.safetensors"]


def run(cfg: PipelineConfig) -> None:
    seed_everything(cfg.seed)
    x, y = load_splits(cfg.data, [cfg.data.train_split])[cfg.data.train_split]
    model = build_model(cfg.teacher, cfg.data.num_classes).train()
    batches = random_batches(x, y, cfg.teacher_train.batch_size, cfg.seed)
    ckpt = stage_checkpoint(cfg, NAME, PARAMS, cfg.teacher_train, {"model": model})
    fit(model.parameters(), batches, ce_step(model), cfg.teacher_train, NAME, cfg.out_dir / "logs" / f"{NAME}.jsonl", ckpt)
    save_model(model, outs(cfg)[0], {"factory": cfg.teacher.factory, "kwargs": cfg.teacher.kwargs})
    ckpt.remove()
