"""Stage 6: teacher vs KD student vs hard-label student on the validation and test splits
-> <out>/metrics.json, <out>/report.md, <out>/report.png (kd_pipeline/report.py). Against the teacher's targets
stored for the test split too (kd_pipeline/store_eval.py: teacher accuracy, each student's agreement and KL), which needs no teacher: a
pipeline without one, or whose teacher checkpoint is gone, still gets its report."""

import json

from kd_pipeline.checkpoint import load_model, load_teacher
from kd_pipeline.config import PipelineConfig
from kd_pipeline.curves import eval_limit
from kd_pipeline.evaluation import model_facts, split_metrics
from kd_pipeline.models import build_model
from kd_pipeline.prepare import SUMMARY, data_dir, open_samples, samples_per_batch
from kd_pipeline.report import write_report
from kd_pipeline.store import open_store
from kd_pipeline.store_eval import store_metrics
from kd_pipeline.student import extra_students

NAME = "evaluate"
PARAMS = ("kind", "data", "teacher", "student", "evaluate", "sequence")
EVERY_RANK = False
STUDENTS = ("student", "baseline")  # checkpoint names of the two students (both cfg.student's model)


def deps(cfg: PipelineConfig):
    teacher = [cfg.out_dir / "teacher.safetensors"] if cfg.teacher is not None and cfg.teacher_train is not None else []
    return teacher + [cfg.out_dir / f"{n}.safetensors" for n in STUDENTS] + [*extra_students(cfg).values(), data_dir(cfg) / SUMMARY, cfg.cache_path]


def outs(cfg: PipelineConfig):
    return [cfg.out_dir / "metrics.json", cfg.out_dir / "report.md", cfg.out_dir / "report.png"]


def run(cfg: PipelineConfig, dist) -> None:
    models = {}
    if cfg.teacher is not None and (cfg.teacher_train is None or (cfg.out_dir / "teacher.safetensors").is_file()):
        models["teacher"] = (load_teacher(cfg)[0], cfg.out_dir / "teacher.safetensors")
    students = {n: cfg.out_dir / f"{n}.safetensors" for n in STUDENTS} | extra_students(cfg)  # + mutual peer, born-again generations
    for name, ckpt in students.items():
        models[name] = (load_model(build_model(cfg.student, cfg.data.num_classes, "student"), ckpt, name), ckpt)
    splits = [*([cfg.data.val_split] if cfg.data.val_split else []), cfg.data.test_split]
    samples = open_samples(cfg, splits)
    metrics = {"kind": cfg.kind, "test_split": cfg.data.test_split, "rows": {}, "models": {n: {} for n in models}}
    for t, split in enumerate(splits):
        ds = samples.datasets[t]
        limit = len(ds) if cfg.kind == "classification" else eval_limit(cfg, ds, cfg.sequence.eval_tokens)
        got = split_metrics({n: m for n, (m, _) in models.items()}, samples, t, limit, samples_per_batch(cfg, cfg.evaluate.batch_size), cfg.data.num_workers)
        metrics["rows"][split] = next(iter(got.values()))["rows"]
        for n, r in got.items():
            metrics["models"][n][split] = r
    one = samples.head(1, split=len(splits) - 1)["x"]
    for n, (m, ckpt) in models.items():
        metrics["models"][n].update(model_facts(m, ckpt, one, cfg.evaluate.latency_runs))
    metrics.update(_from_store(cfg, {n: m for n, (m, _) in models.items() if n != "teacher"}, metrics))
    (cfg.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_report(cfg, metrics)


def _from_store(cfg: PipelineConfig, students: dict, metrics: dict) -> dict:
    """{"from_store": ...} over the store's evaluation rows; without a live teacher, the test split's agreement
    with the teacher is the store's (the same quantity: top-1 = the teacher's stored top-1)."""
    store = open_store(cfg.cache_path)
    try:
        m = store.manifest
        samples = open_samples(cfg, m.dataset.splits) if m.kind == "classification" else None
        max_rows = cfg.sequence.eval_tokens if m.kind == "sequence" else None
        got = store_metrics(store, students, samples, samples_per_batch(cfg, cfg.evaluate.batch_size), max_rows, cfg.data.num_workers)
    finally:
        store.close()
    if got is None:
        return {}
    got["store"] = str(store.path)
    if "teacher" not in metrics["models"] and got["split"] == cfg.data.test_split:
        for n, v in got["models"].items():
            metrics["models"][n][got["split"]]["agreement_with_teacher"] = v["agreement_with_teacher"]
    return {"from_store": got}
