"""Stage 6: teacher vs KD student vs hard-label student on the validation and test splits
-> <out>/metrics.json, <out>/report.md, <out>/report.png."""

import json

import numpy as np

from kd_pipeline.checkpoint import load_model, load_teacher
from kd_pipeline.config import PipelineConfig
from kd_pipeline.evaluation import model_facts, read_curve, split_metrics, write_report
from kd_pipeline.models import build_model
from kd_pipeline.prepare import SUMMARY, data_dir, open_samples, samples_per_batch, student_vocab

NAME = "evaluate"
PARAMS = ("kind", "data", "teacher", "student", "evaluate", "sequence")
EVERY_RANK = False
STUDENTS = ("student", "baseline")  # checkpoint names of the two students (both cfg.student's model)


def deps(cfg: PipelineConfig):
    teacher = [cfg.out_dir / "teacher.safetensors"] if cfg.teacher_train is not None else []
    return teacher + [cfg.out_dir / f"{n}.safetensors" for n in STUDENTS] + [data_dir(cfg) / SUMMARY]


def outs(cfg: PipelineConfig):
    return [cfg.out_dir / "metrics.json", cfg.out_dir / "report.md", cfg.out_dir / "report.png"]


def run(cfg: PipelineConfig, dist) -> None:
    models = {"teacher": (load_teacher(cfg)[0], cfg.out_dir / "teacher.safetensors")}
    for name in STUDENTS:
        ckpt = cfg.out_dir / f"{name}.safetensors"
        models[name] = (load_model(build_model(cfg.student, student_vocab(cfg), "student"), ckpt, name), ckpt)
    splits = [*([cfg.data.val_split] if cfg.data.val_split else []), cfg.data.test_split]
    samples = open_samples(cfg, splits)
    # models that read the same tokens are evaluated together; a student with its own tokenizer reads its own
    # windows of the same texts (compare them per character), and has no top-1 agreement with the teacher
    groups = [(list(models), samples)]
    if cfg.kind == "sequence" and cfg.sequence.student_tokenizer is not None:
        groups = [(["teacher"], samples), (list(STUDENTS), open_samples(cfg, splits, side="student"))]
    metrics = {"kind": cfg.kind, "test_split": cfg.data.test_split, "rows": {}, "models": {n: {} for n in models}}
    for g, (names, smp) in enumerate(groups):
        for t, split in enumerate(splits):
            ds = smp.datasets[t]
            limit = _limit(cfg, samples.datasets[t])
            if len(groups) > 1:  # whole documents, the same texts for both tokenizers: those the teacher's budget reaches
                limit = int(np.searchsorted(ds.doc, int(samples.datasets[t].doc[limit - 1]) + 1, side="left"))
            got = split_metrics({n: models[n][0] for n in names}, smp, t, limit, samples_per_batch(cfg, cfg.evaluate.batch_size), cfg.data.num_workers)
            metrics["rows"].setdefault(split, next(iter(got.values()))["rows"])
            for n, r in got.items():
                metrics["models"][n][split] = {**r, "agreement_with_teacher": None} if g else r
        one = smp.head(1, split=len(splits) - 1)["x"]
        for n in names:
            m, ckpt = models[n]
            metrics["models"][n].update(model_facts(m, ckpt, one, cfg.evaluate.latency_runs))
    (cfg.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    curves = {f"train_{n}": read_curve(cfg.out_dir / "logs" / f"train_{n}.jsonl") for n in models}
    write_report(cfg.out_dir, metrics, curves)


def _limit(cfg: PipelineConfig, ds) -> int:
    """Samples evaluated: all (classification), or the first windows up to sequence.eval_tokens tokens."""
    if cfg.kind == "classification":
        return len(ds)
    return max(1, int(np.searchsorted(np.cumsum(ds.lengths), cfg.sequence.eval_tokens, side="right")))
