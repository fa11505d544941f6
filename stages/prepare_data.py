"""Stage 1: check every split the pipeline reads, before anything trains (classification: item shapes, dtypes,
labels, non-empty splits; fingerprint) or tokenize the corpus (sequence) -> <out>/data/. A pipeline without a
teacher then checks that its data is the data the store at cache.path was made for."""

from pathlib import Path

from kd_pipeline.config import PipelineConfig
from kd_pipeline.consumer import check_data_for_store
from kd_pipeline.prepare import SUMMARY, data_dir, prepare

NAME = "prepare_data"
PARAMS = ("kind", "data", "sequence")
EVERY_RANK = False  # rank 0 prepares, the others wait


def deps(cfg: PipelineConfig):
    """A consumer's data check compares with the store; local tokenizer folders: one replaced in place re-tokenizes."""
    store = [cfg.cache_path] if cfg.consumer else []
    if cfg.kind != "sequence":
        return store
    st = cfg.sequence.student_tokenizer
    return store + [Path(p) for p in (cfg.sequence.tokenizer, st.path if st else None) if p]


def outs(cfg: PipelineConfig):
    if cfg.kind != "sequence":
        return [data_dir(cfg) / SUMMARY]
    own = [data_dir(cfg) / "tokenizer.json"] if cfg.sequence.tokenizer is None else []  # the built-in BPE, trained here
    student = [data_dir(cfg) / "student_tokens"] if cfg.sequence.student_tokenizer else []
    return [data_dir(cfg) / SUMMARY, data_dir(cfg) / "tokens", *own, *student]


def run(cfg: PipelineConfig, dist) -> None:
    summary = prepare(cfg)
    if cfg.consumer:
        check_data_for_store(cfg, summary)
