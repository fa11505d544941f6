"""LM stage 1: train the byte-level BPE on the train split (vocab = data.num_classes) and encode the train,
validation and test splits -> <out>/tokenizer.json, <out>/tokens/<split>.{ids,offsets}.npy."""

from kd_pipeline.components import resolve
from kd_pipeline.config import PipelineConfig
from kd_pipeline.lm.tokenizer import encode_split, save_split, train_bpe

NAME = "lm_prepare"
PARAMS = ("data", "sequence")


def splits(cfg: PipelineConfig) -> list[str]:
    return [cfg.data.train_split, cfg.sequence.val_split, cfg.data.test_split]


def deps(cfg: PipelineConfig):
    return []


def outs(cfg: PipelineConfig):
    return [cfg.out_dir / "tokenizer.json", cfg.out_dir / "tokens"]


def run(cfg: PipelineConfig) -> None:
    corpus = resolve(cfg.data.factory, "data.factory")
    texts = {s: corpus(split=s, **cfg.data.kwargs) for s in splits(cfg)}
    tok = outs(cfg)[0]
    train_bpe(texts[cfg.data.train_split], cfg.data.num_classes, tok)
    for s, t in texts.items():
        save_split(outs(cfg)[1], s, *encode_split(tok, t))
