"""Stage 6: teacher vs KD student vs hard-label student on the validation and test splits
-> <out>/metrics.json, <out>/report.md, <out>/report.png."""

import json

import numpy as np

from kd_pipeline.checkpoint import load_model, load_teacher
from kd_pipeline.config import PipelineConfig
from kd_pipeline.evaluation import model_facts, read_curve, split_metrics, write_report
from kd_pipeline.models import build_model
from kd_pipeline.prepare import SUMMARY, data_dir, open_samples, samples_per_batch
from kd_pipeline.student import extra_students

NAME = "evaluate"
PARAMS = ("kind", "data", "teacher", "student", "evaluate", "sequence")
EVERY_RANK = False
STUDENTS = ("student", "baseline")  # checkpoint names of the two students (both cfg.student's model)


def deps(cfg: PipelineConfig):
    teacher = [cfg.out_dir / "teacher.safetensors"] if cfg.teacher_train is not None else []
    return teacher + [cfg.out_dir / f"{n}.safetensors" for n in STUDENTS] + [*extra_students(cfg).values(), data_dir(cfg) / SUMMARY]


def outs(cfg: PipelineConfig):
    return [cfg.out_dir / "metrics.json", cfg.out_dir / "report.md", cfg.out_dir / "report.png"]


def run(cfg: PipelineConfig, dist) -> None:
    models = {"teacher": (load_teacher(cfg)[0], cfg.out_dir / "teacher.safetensors")}
    students = {n: cfg.out_dir / f"{n}.safetensors" for n in STUDENTS} | extra_students(cfg)  # + mutual peer, born-again generations
    for name, ckpt in students.items():
        models[name] = (load_model(build_model(cfg.student, cfg.data.num_classes, "student"), ckpt, name), ckpt)
    splits = [*([cfg.data.val_split] if cfg.data.val_split else []), cfg.data.test_split]
    samples = open_samples(cfg, splits)
    metrics = {"kind": cfg.kind, "test_split": cfg.data.test_split, "rows": {}, "models": {n: {} for n in models}}
    for t, split in enumerate(splits):
        ds = samples.datasets[t]
        limit = len(ds) if cfg.kind == "classification" else max(1, int(np.searchsorted(np.cumsum(ds.lengths), cfg.sequence.eval_tokens, side="right")))
        got = split_metrics({n: m for n, (m, _) in models.items()}, samples, t, limit, samples_per_batch(cfg, cfg.evaluate.batch_size), cfg.data.num_workers)
        metrics["rows"][split] = next(iter(got.values()))["rows"]
        for n, r in got.items():
            metrics["models"][n][split] = r
    one = samples.head(1, split=len(splits) - 1)["x"]
    for n, (m, ckpt) in models.items():
        metrics["models"][n].update(model_facts(m, ckpt, one, cfg.evaluate.latency_runs))
    (cfg.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    curves = {f"train_{n}": read_curve(cfg.out_dir / "logs" / f"train_{n}.jsonl") for n in models}
    write_report(cfg.out_dir, metrics, curves)
