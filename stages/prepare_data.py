"""Stage 1: check every split the pipeline reads, before anything trains (classification: item shapes, dtypes,
labels, non-empty splits; fingerprint) or tokenize the corpus (sequence) -> <out>/data/. A pipeline without a
teacher then checks that its data is the data the store at cache.path was made for."""

from kd_pipeline.config import PipelineConfig
from kd_pipeline.consumer import check_data_for_store
from kd_pipeline.prepare import SUMMARY, data_dir, prepare

NAME = "prepare_data"
PARAMS = ("kind", "data", "sequence")
EVERY_RANK = False  # rank 0 prepares, the others wait


def deps(cfg: PipelineConfig):
    return [cfg.cache_path] if cfg.consumer else []  # a consumer's data check compares with the store


def outs(cfg: PipelineConfig):
    return [data_dir(cfg) / SUMMARY] + ([data_dir(cfg) / "tokens", data_dir(cfg) / "tokenizer.json"] if cfg.kind == "sequence" else [])


def run(cfg: PipelineConfig, dist) -> None:
    summary = prepare(cfg)
    if cfg.consumer:
        check_data_for_store(cfg, summary)
