"""Stage 3: train the student from the store alone -> <out>/student.safetensors.

Never builds or loads the teacher: k, temperatures and num_classes come from the store's manifest, targets
from its arrays, streamed in shuffled whole blocks.
"""

from kd_pipeline.checkpoint import save_model
from kd_pipeline.config import PipelineConfig
from kd_pipeline.data import load_splits
from kd_pipeline.distill import check_store_for, kd_batches, kd_step, rows_aligned
from kd_pipeline.models import build_model
from kd_pipeline.store import open_store
from kd_pipeline.stream import BlockStream
from kd_pipeline.runner import path_digest
from kd_pipeline.training import fit, seed_everything, stage_checkpoint

NAME = "train_student"
PARAMS = ("seed", "data", "student", "student_train", "distill")


def deps(cfg: PipelineConfig):
    return [cfg.cache_path]


def outs(cfg: PipelineConfig):
    return [cfg.out_dir / "student.safetensors"]


def run(cfg: PipelineConfig) -> None:
    seed_everything(cfg.seed)
    store = open_store(cfg.cache_path)
    m = store.manifest
    splits = load_splits(cfg.data, m.dataset.splits)
    check_store_for(store, splits, cfg.data.num_classes, cfg.distill.temperature, (cfg.teacher, cfg.out_dir / "teacher.safetensors"))
    x_rows, y_rows = rows_aligned(store, splits)
    student = build_model(cfg.student, m.num_classes).train()
    step, extra = kd_step(student, cfg.distill, store, x_rows)
    stream = BlockStream(store, cfg.student_train.batch_size, cfg.distill.shuffle_window, cfg.seed)
    batches = kd_batches(stream, x_rows, y_rows, store)
    d = cfg.model_dump(mode="json")
    ckpt = stage_checkpoint(cfg, NAME, cfg.student_train, {"student": student}, {k: d[k] for k in PARAMS}, path_digest(store.path))
    fit([*student.parameters(), *extra], batches, step, cfg.student_train, NAME, cfg.out_dir / "logs" / f"{NAME}.jsonl", ckpt)
    save_model(student, outs(cfg)[0], {"factory": cfg.student.factory, "kwargs": cfg.student.kwargs, "store": str(store.path)})
    ckpt.remove()
    store.close()
