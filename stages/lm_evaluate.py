"""LM stage 6: teacher vs KD student vs hard-label student on validation and test tokens
-> <out>/metrics.json, <out>/report.md."""

import json

from kd_pipeline.checkpoint import load_model
from kd_pipeline.config import PipelineConfig
from kd_pipeline.inspect import describe
from kd_pipeline.lm.common import load_teacher
from kd_pipeline.lm.evaluate import limit_tokens, lm_metrics, write_lm_report
from kd_pipeline.lm.tokenizer import load_split, windows
from kd_pipeline.models import build_model

NAME = "lm_evaluate"
PARAMS = ("data", "teacher", "student", "evaluate", "sequence")


def deps(cfg: PipelineConfig):
    teacher = [cfg.out_dir / "teacher.safetensors"] if cfg.teacher_train is not None else []
    return teacher + [cfg.out_dir / "student.safetensors", cfg.out_dir / "baseline.safetensors", cfg.out_dir / "tokens", cfg.cache_path]


def outs(cfg: PipelineConfig):
    return [cfg.out_dir / "metrics.json", cfg.out_dir / "report.md"]


def run(cfg: PipelineConfig) -> None:
    V = cfg.data.num_classes
    models = {"teacher": (load_teacher(cfg), cfg.out_dir / "teacher.safetensors")}
    for name in ("student", "baseline"):
        ckpt = cfg.out_dir / f"{name}.safetensors"
        models[name] = (load_model(build_model(cfg.student, V), ckpt, name), ckpt)
    splits = {}
    for s in (cfg.sequence.val_split, cfg.data.test_split):
        ids, offsets = load_split(cfg.out_dir / "tokens", s, V)
        splits[s] = (ids, *limit_tokens(*windows(offsets, cfg.sequence.context), cfg.sequence.eval_tokens))
    bs = max(1, cfg.evaluate.batch_size // cfg.sequence.context)
    metrics = lm_metrics(models, splits, bs)
    info = describe(cfg.cache_path)
    metrics["store"] = {k: info[k] for k in ("target_bytes_per_row", "full_fp32_bytes_per_row", "ratio_to_full_fp32")}
    metrics["store"]["reconstruction_kl"] = info["manifest"].get("reconstruction_kl")
    (cfg.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_lm_report(cfg.out_dir / "report.md", metrics)
