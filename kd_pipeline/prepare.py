"""The data every stage reads, for both kinds: checked and summarised once (prepare_data), then opened by id.

classification: the user's dataset factory per split, checked item by item and fingerprinted in one streamed
  pass (kd_pipeline/data/scan.py).
sequence: the corpus factory's texts per split -> a tokenizer (a byte-level BPE trained on the train split)
  -> flat token files `<out>/data/tokens/<split>.{ids,offsets}.npy`, cut into windows of `sequence.context`.
Both write `<out>/data/summary.json`: samples per split (and what they hold), the splits the store holds, and
the dataset fingerprint the store records.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

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
    from .components import call_factory
    from .lm.tokenizer import TokenWindows, encode_split, save_split, train_bpe

    folder = data_dir(cfg) / "tokens"
    texts = {s: call_factory(cfg.data.factory, "data.factory", split=s, **cfg.data.kwargs) for s in cfg.data_splits}
    for s, t in texts.items():
        if not t:
            raise DataError(f"data: split {s!r} is empty ({cfg.data.factory} returned no text)")
    tok = data_dir(cfg) / "tokenizer.json"
    train_bpe(texts[cfg.data.train_split], cfg.data.num_classes, tok)
    splits, h = {}, hashlib.sha256()
    for s, t in texts.items():
        save_split(folder, s, *encode_split(tok, t))
        w = TokenWindows(folder, s, cfg.sequence.context, cfg.data.num_classes)
        if len(w) == 0:
            raise DataError(f"data: split {s!r} has no sample of >= 2 tokens")
        splits[s] = {"samples": len(w), "tokens": int(w.lengths.sum())}
    for s in store_splits(cfg):  # the token files' bytes, split by split, with the window size
        h.update(f"{s}|context={cfg.sequence.context}|".encode())
        for suffix in ("ids", "offsets"):
            with open(folder / f"{s}.{suffix}.npy", "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return {"splits": splits, "store_splits": store_splits(cfg), "fingerprint": "sha256:" + h.hexdigest()}


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


def open_samples(cfg, splits: list[str]) -> SplitSamples:
    return SplitSamples(open_datasets(cfg, splits), list(splits), kind_for(cfg.kind, cfg.data.num_classes))


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
