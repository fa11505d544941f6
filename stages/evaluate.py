"""Stage 6: teacher vs KD student vs hard-label student on the validation and test splits
-> <out>/metrics.json, <out>/report.md, <out>/report.png (kd_pipeline/report.py). Against the teacher's targets
stored for the test split too (kd_pipeline/store_eval.py: teacher accuracy, each student's agreement and KL), which needs no teacher: a
pipeline without one, or whose teacher checkpoint is gone, still gets its report."""

import json

import numpy as np

from kd_pipeline.checkpoint import load_model, load_teacher
from kd_pipeline.config import PipelineConfig
from kd_pipeline.curves import eval_limit
from kd_pipeline.evaluation import model_facts, split_metrics
from kd_pipeline.models import build_model
from kd_pipeline.prepare import SUMMARY, data_dir, open_samples, samples_per_batch, student_vocab
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
        models[name] = (load_model(build_model(cfg.student, student_vocab(cfg), "student"), ckpt, name), ckpt)
    splits = [*([cfg.data.val_split] if cfg.data.val_split else []), cfg.data.test_split]
    samples = open_samples(cfg, splits)
    metrics = {"kind": cfg.kind, "test_split": cfg.data.test_split, "rows": {}, "models": {n: {} for n in models}}
    # models that read the same tokens are evaluated together; a student with its own tokenizer reads its own
    # windows of the same texts (compare them per character), and has no top-1 agreement with the teacher
    cross = cfg.kind == "sequence" and cfg.sequence.student_tokenizer is not None
    if cross:
        metrics["cross_tokenizer"] = True  # the summary and report then compare per character (summary.per_char)
    students = [n for n in models if n != "teacher"]
    groups = [(list(models), samples)]
    if cross:
        groups = [(["teacher"] if "teacher" in models else [], samples), (students, open_samples(cfg, splits, side="student"))]
    for g, (names, smp) in enumerate(groups):
        if not names:
            continue
        for t, split in enumerate(splits):
            ds = smp.datasets[t]
            limit = len(samples.datasets[t]) if cfg.kind == "classification" else eval_limit(cfg, samples.datasets[t], cfg.sequence.eval_tokens)
            if cross:  # whole documents, the same texts for both tokenizers: those the teacher's budget reaches
                limit = int(np.searchsorted(ds.doc, int(samples.datasets[t].doc[limit - 1]) + 1, side="left"))
            got = split_metrics({n: models[n][0] for n in names}, smp, t, limit, samples_per_batch(cfg, cfg.evaluate.batch_size), cfg.data.num_workers)
            metrics["rows"].setdefault(split, next(iter(got.values()))["rows"])
            for n, r in got.items():
                metrics["models"][n][split] = {**r, "agreement_with_teacher": None} if g else r
        one = smp.head(1, split=len(splits) - 1)["x"]
        for n in names:
            m, ckpt = models[n]
            metrics["models"][n].update(model_facts(m, ckpt, one, cfg.evaluate.latency_runs))
    # against the store's rows: its token rows are the teacher's, so only students of the same tokenizer
    metrics.update(_from_store(cfg, {} if cross else {n: models[n][0] for n in students}, metrics))
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
