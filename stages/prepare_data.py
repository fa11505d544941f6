"""Stage 1: check every split the pipeline reads, before anything trains (classification: item shapes, dtypes,
labels, non-empty splits; fingerprint) or tokenize the corpus (sequence) -> <out>/data/."""

from pathlib import Path

from kd_pipeline.config import PipelineConfig
from kd_pipeline.prepare import SUMMARY, data_dir, prepare

NAME = "prepare_data"
PARAMS = ("kind", "data", "sequence")
EVERY_RANK = False  # rank 0 prepares, the others wait


def deps(cfg: PipelineConfig):
    """Local tokenizer folders: a tokenizer replaced in place re-tokenizes."""
    if cfg.kind != "sequence":
        return []
    st = cfg.sequence.student_tokenizer
    return [Path(p) for p in (cfg.sequence.tokenizer, st.path if st else None) if p]


def outs(cfg: PipelineConfig):
    if cfg.kind != "sequence":
        return [data_dir(cfg) / SUMMARY]
    own = [data_dir(cfg) / "tokenizer.json"] if cfg.sequence.tokenizer is None else []  # the built-in BPE, trained here
    student = [data_dir(cfg) / "student_tokens"] if cfg.sequence.student_tokenizer else []
    return [data_dir(cfg) / SUMMARY, data_dir(cfg) / "tokens", *own, *student]


def run(cfg: PipelineConfig, dist) -> None:
    prepare(cfg)
