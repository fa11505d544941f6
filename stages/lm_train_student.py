"""LM stage 4: train the student from the store alone -> <out>/student.safetensors.

Reads no corpus, no tokenizer, no teacher: input tokens, vocabulary size, temperatures and targets all come
from the store, streamed as shuffled whole samples."""

from kd_pipeline.checkpoint import save_model
from kd_pipeline.config import PipelineConfig
from kd_pipeline.lm.stream import SampleStream, lm_kd_step
from kd_pipeline.losses import temperature_index
from kd_pipeline.models import build_model
from kd_pipeline.store import open_store
from kd_pipeline.runner import path_digest
from kd_pipeline.training import fit, seed_everything, stage_checkpoint

NAME = "lm_train_student"
PARAMS = ("seed", "student", "student_train", "distill")


def deps(cfg: PipelineConfig):
    return [cfg.cache_path]


def outs(cfg: PipelineConfig):
    return [cfg.out_dir / "student.safetensors"]


def run(cfg: PipelineConfig) -> None:
    seed_everything(cfg.seed)
    store = open_store(cfg.cache_path)
    m = store.manifest
    temperature_index(tuple(m.temperatures), cfg.distill.temperature)  # fail before training, not during
    student = build_model(cfg.student, m.num_classes).train()
    stream = SampleStream(store, cfg.student_train.batch_size, cfg.distill.shuffle_window, cfg.seed)
    step = lm_kd_step(student, cfg.distill.alpha, cfg.distill.temperature)
    d = cfg.model_dump(mode="json")
    ckpt = stage_checkpoint(cfg, NAME, cfg.student_train, {"student": student}, {k: d[k] for k in PARAMS}, path_digest(store.path))
    fit(student.parameters(), iter(stream), step, cfg.student_train, NAME, cfg.out_dir / "logs" / f"{NAME}.jsonl", ckpt)
    save_model(student, outs(cfg)[0], {"factory": cfg.student.factory, "kwargs": cfg.student.kwargs, "store": str(store.path)})
    ckpt.remove()
    store.close()
