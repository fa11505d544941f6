"""Stage 5: teacher vs distilled student vs hard-label student on the test split
-> <out>/metrics.json, <out>/report.md, <out>/report.png."""

import json

from kd_pipeline.checkpoint import load_model
from kd_pipeline.config import PipelineConfig
from kd_pipeline.data import load_splits
from kd_pipeline.evaluation import evaluate_models, read_curve, write_report
from kd_pipeline.models import build_model

NAME = "evaluate"
PARAMS = ("data", "teacher", "student", "evaluate")
MODELS = {"teacher": "teacher", "student": "student", "baseline": "student"}  # name -> component


def deps(cfg: PipelineConfig):
    return [cfg.out_dir / f"{name}.safetensors" for name in MODELS]


def outs(cfg: PipelineConfig):
    return [cfg.out_dir / "metrics.json", cfg.out_dir / "report.md", cfg.out_dir / "report.png"]


def run(cfg: PipelineConfig) -> None:
    x, y = load_splits(cfg.data, [cfg.data.test_split])[cfg.data.test_split]
    models = {}
    for name, comp in MODELS.items():
        ckpt = cfg.out_dir / f"{name}.safetensors"
        models[name] = (load_model(build_model(getattr(cfg, comp), cfg.data.num_classes), ckpt, name), ckpt)
    metrics = evaluate_models(models, x, y, cfg.evaluate.latency_runs, cfg.evaluate.batch_size)
    (cfg.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    curves = {f"train_{n}": read_curve(cfg.out_dir / "logs" / f"train_{n}.jsonl") for n in MODELS}
    write_report(cfg.out_dir, metrics, curves)
