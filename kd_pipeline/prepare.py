"""The data every stage reads, for both kinds: checked and summarised once (prepare_data), then opened by id.

classification: the user's dataset factory per split, checked item by item and fingerprinted in one streamed
  pass (kd_pipeline/data/scan.py).
sequence: the corpus factory's documents per split, streamed -> a tokenizer (a byte-level BPE trained on the
  train split, or a local Hugging Face one) -> flat token files `<out>/data/tokens/<split>.*.npy` (ids, document
  offsets, character offsets, loss mask for conversations: kd_pipeline/lm/tokenizer.py), cut into windows of
  `sequence.context`; with a student tokenizer, the same documents again into `<out>/data/student_tokens`.
Both write `<out>/data/summary.json`: samples per split (and what they hold), the splits the store holds, and
the dataset fingerprint the store records.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .data import SplitSamples
from .data.arrays import open_split
from .data.scan import scan_splits
from .errors import DataError
from .kinds import kind_for
from .layout import Layout

SUMMARY = "summary.json"


def data_dir(cfg) -> Path:
    return cfg.out_dir / "data"


def store_splits(cfg) -> list[str]:
    """The splits a store holds, in order: the training splits (interleaved), then the evaluation split."""
    return [*cfg.cached_splits, cfg.data.test_split]


def prepare(cfg) -> dict:
    """Checks (classification) or tokenizes (sequence) every split; writes and returns the data summary."""
    kind = kind_for(cfg.kind, cfg.data.num_classes)
    if cfg.kind == "classification":
        labelled = [cfg.data.train_split, cfg.data.test_split, *([cfg.data.val_split] if cfg.data.val_split else [])]
        summary = scan_splits(cfg.data, kind, store_splits(cfg), labelled)
    else:
        summary = _prepare_tokens(cfg)
    summary["kind"] = cfg.kind
    summary["identity"] = data_identity(cfg)
    out = data_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY).write_text(json.dumps(summary, indent=1))
    return summary


def _prepare_tokens(cfg) -> dict:
    """sequence: each split's documents, streamed from the corpus factory (called once per pass), encoded by
    the teacher's tokenizer (trained now when sequence.tokenizer is None) into `<out>/data/tokens`, and with
    sequence.student_tokenizer by the student's into `<out>/data/student_tokens` (same documents)."""
    from .components import call_factory
    from .lm.tokenizer import TokenWindows, encode_docs, load_tokenizer, train_bpe, write_split

    def corpus(s: str):
        return call_factory(cfg.data.factory, "data.factory", split=s, **cfg.data.kwargs)

    seq = cfg.sequence
    if seq.tokenizer is None:
        path = data_dir(cfg) / "tokenizer.json"
        train_bpe(_texts_only(corpus(cfg.data.train_split)), cfg.data.num_classes, path)
        tok = load_tokenizer(path, "tokenizer")
    else:
        tok = load_tokenizer(seq.tokenizer, "sequence.tokenizer")
    sides = [(tok, data_dir(cfg) / "tokens", cfg.data.num_classes)]
    if seq.student_tokenizer is not None:
        st = seq.student_tokenizer
        sides.append((load_tokenizer(st.path, "sequence.student_tokenizer.path"), data_dir(cfg) / "student_tokens", st.num_classes))
    splits, h = {}, hashlib.sha256()
    for s in cfg.data_splits:
        for t, folder, vocab in sides:
            if write_split(folder, s, encode_docs(t, corpus(s), vocab)) == 0:
                raise DataError(f"data: split {s!r} is empty ({cfg.data.factory} returned no text)")
        w = TokenWindows(sides[0][1], s, seq.context, cfg.data.num_classes)
        if len(w) == 0:
            raise DataError(f"data: split {s!r} has no sample of >= 2 tokens")
        splits[s] = {"samples": len(w), "tokens": int(w.lengths.sum())}
        if w.loss is not None:
            splits[s]["loss_tokens"] = int(w.loss.sum())  # positions that carry loss (assistant tokens)
    folder = sides[0][1]
    loss_mask = any("loss_tokens" in splits[s] for s in cfg.data_splits)
    for s in cfg.data_splits:  # every split then has a loss mask (the store's rows all need one)
        for _, f, _ in sides:
            if loss_mask and not (f / f"{s}.loss.npy").is_file():
                np.save(f / f"{s}.loss.npy", np.ones(len(np.load(f / f"{s}.ids.npy", mmap_mode="r")), np.uint8))
    for s in store_splits(cfg):  # the token files' bytes, split by split, with the window size
        h.update(f"{s}|context={seq.context}|".encode())
        for suffix in ("ids", "offsets", "chars", "loss"):
            if (folder / f"{s}.{suffix}.npy").is_file():
                with open(folder / f"{s}.{suffix}.npy", "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
    return {"splits": splits, "store_splits": store_splits(cfg), "fingerprint": "sha256:" + h.hexdigest(),
            "char_offsets": True, "loss_mask": loss_mask}


def _texts_only(items):
    """The built-in BPE is trained on plain texts; conversations need a tokenizer with a chat template."""
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise DataError(f"data: document {i}: conversations need sequence.tokenizer (a Hugging Face tokenizer with a chat template)")
        yield item


def data_identity(cfg) -> str:
    """Hash of the config sections the summary depends on: a summary made for other data is never used."""
    d = cfg.model_dump(mode="json")
    return hashlib.sha256(json.dumps([d["kind"], d["data"], d["sequence"]], sort_keys=True).encode()).hexdigest()


def load_summary(cfg) -> dict:
    """The data summary of this config: prepare_data's, or made now if it is missing or was made for other
    data settings (a stage run alone, e.g. `kd run --stage train_student` in a new run folder)."""
    p = data_dir(cfg) / SUMMARY
    try:
        summary = json.loads(p.read_text())
        if summary.get("identity") == data_identity(cfg):
            return summary
    except (OSError, ValueError):
        pass
    return prepare(cfg)


def open_datasets(cfg, splits: list[str]) -> list:
    """The map-style datasets of `splits` as the stages read them."""
    if cfg.kind == "classification":
        return [open_split(cfg.data, s) for s in splits]
    from .lm.tokenizer import TokenWindows

    return [TokenWindows(data_dir(cfg) / "tokens", s, cfg.sequence.context, cfg.data.num_classes) for s in splits]


def open_samples(cfg, splits: list[str], side: str = "teacher") -> SplitSamples:
    """The samples of `splits`. side (sequence with sequence.student_tokenizer only): "teacher" = the data's
    tokens; "student" = the student tokenizer's own windows (baseline, evaluation); "aligned" = the student's
    tokens of each teacher sample (cross-tokenizer distillation, addressed by the store's sample ids)."""
    if side == "teacher":
        return SplitSamples(open_datasets(cfg, splits), list(splits), kind_for(cfg.kind, cfg.data.num_classes))
    from .lm.tokenizer import AlignedWindows, TokenWindows

    st = cfg.sequence.student_tokenizer
    folder, ctx = data_dir(cfg) / "student_tokens", st.context or cfg.sequence.context
    if side == "student":
        ds = [TokenWindows(folder, s, ctx, st.num_classes) for s in splits]
    else:
        ds = [AlignedWindows(t, folder, s, ctx, st.num_classes) for t, s in zip(open_datasets(cfg, splits), splits)]
    return SplitSamples(ds, list(splits), kind_for(cfg.kind, st.num_classes))


def student_vocab(cfg) -> int:
    """The student's output width: data.num_classes, or its own tokenizer's (cross-tokenizer distillation)."""
    st = cfg.sequence.student_tokenizer if cfg.kind == "sequence" else None
    return st.num_classes if st is not None else cfg.data.num_classes


def store_layout(cfg, summary: dict, samples: SplitSamples | None = None) -> Layout:
    """The row order of the store this pipeline writes (training splits interleaved, the test split after)."""
    names = summary["store_splits"]
    sizes = {s: summary["splits"][s]["samples"] for s in names}
    lengths = None
    if cfg.cache.views is not None:  # V rows per training sample, 1 per evaluation sample (kd_pipeline/views.py)
        from .views import row_lengths

        lengths = row_lengths(sizes, cfg.cache.views.count, cfg.data.test_split)
    if cfg.kind == "sequence":
        ds = samples.datasets if samples is not None else open_datasets(cfg, names)
        lengths = {s: d.lengths for s, d in zip(names, ds)}
    return Layout(sizes, len(names) - 1, lengths)


def samples_per_batch(cfg, rows: int) -> int:
    """`cache.batch_size` and `evaluate.batch_size` count rows: samples for classification, tokens for a
    sequence (whose samples hold up to `sequence.context` tokens)."""
    return rows if cfg.kind == "classification" else max(1, rows // cfg.sequence.context)
