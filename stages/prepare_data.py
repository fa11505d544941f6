"""Stage 1: check every split the pipeline reads, before anything trains (classification: item shapes, dtypes,
labels, non-empty splits; fingerprint) or tokenize the corpus (sequence) -> <out>/data/."""

from kd_pipeline.config import PipelineConfig
from kd_pipeline.prepare import SUMMARY, data_dir, prepare

NAME = "prepare_data"
PARAMS = ("kind", "data", "sequence")
EVERY_RANK = False  # rank 0 prepares, the others wait


def deps(cfg: PipelineConfig):
    return []


def outs(cfg: PipelineConfig):
    return [data_dir(cfg) / SUMMARY] + ([data_dir(cfg) / "tokens", data_dir(cfg) / "tokenizer.json"] if cfg.kind == "sequence" else [])


def run(cfg: PipelineConfig, dist) -> None:
    prepare(cfg)
