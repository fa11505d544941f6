"""Shared by the LM benchmarks: the LM track's trained teacher and its tokens (from a finished
`kd run bench/lm_pipeline.yaml --stage prepare_data --stage train_teacher`), windows of those tokens as the
stages read them, a manifest for any target scheme, and stores written through the store's writer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from kd_pipeline.checkpoint import load_teacher
from kd_pipeline.config import load_config
from kd_pipeline.data import SplitSamples
from kd_pipeline.kinds import Sequence, pad_batch
from kd_pipeline.layout import Layout
from kd_pipeline.lm.tokenizer import load_split, windows
from kd_pipeline.prepare import data_dir
from kd_pipeline.store import CacheWriter, Manifest, open_store
from kd_pipeline.store.format import indices_dtype
from kd_pipeline.store.samples_parts import span_table

PIPELINE = Path(os.environ.get("KD_LM_PIPELINE", "bench/lm_pipeline.yaml"))


def lm_setup(split: str = "val"):
    """-> cfg, teacher (eval, CPU), (ids, starts, lengths) of `split`."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    cfg = load_config(PIPELINE)
    teacher = load_teacher(cfg)[0]
    ids, offsets = load_split(data_dir(cfg) / "tokens", split, cfg.data.num_classes)
    return cfg, teacher, (ids, *windows(offsets, cfg.sequence.context))


def scheme_manifest(V: int, k: int, values_dtype: str, targets: str, num_rows: int = 0, chunk_rows: int = 16384,
                    temperatures=(1.0,), num_samples: int = 0, ids: str = "plain") -> Manifest:
    sampled = targets == "sampled"
    return Manifest(
        format="kd-cache", version=1, kind="sequence", num_classes=V, top_k=k, temperatures=list(temperatures),
        values_dtype=values_dtype, indices_dtype=indices_dtype(V), values_scheme="q8" if values_dtype == "uint8" else "relative",
        indices_scheme=ids,
        targets=targets, sample_draws=k if sampled else None, sample_temperature=temperatures[0] if sampled else None,
        num_rows=num_rows, chunk_rows=chunk_rows,
        teacher={"factory": "bench", "kwargs": {}, "checkpoint_sha256": "-"},
        dataset={"factory": "bench", "kwargs": {}, "splits": ["train"], "split_sizes": {"train": num_samples}, "num_samples": num_samples,
                 "fingerprint": "-"},
        complete=False, created_with="bench",
    )


def first_tokens(starts: np.ndarray, lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    k = int(np.searchsorted(np.cumsum(lengths), n, side="left")) + 1
    return starts[:k], lengths[:k]


class Windows(Dataset):
    """Samples (starts, lengths) of a flat token array, read as the stages read a split (TokenWindows's
    interface: item i = sample i's ids (L,), `lengths` = rows per sample)."""

    def __init__(self, ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray):
        self.ids, self.starts, self.lengths = ids, starts, lengths

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> np.ndarray:
        a = int(self.starts[i])
        return np.asarray(self.ids[a : a + int(self.lengths[i])])


def window_samples(ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray, V: int) -> SplitSamples:
    """The windows as one split "train" of a SplitSamples (shuffled_batches, teacher_pass, split_metrics)."""
    return SplitSamples([Windows(ids, starts, lengths)], ["train"], Sequence(V))


def window_layout(lengths: np.ndarray) -> Layout:
    """Store rows = the samples' tokens back to back (one split, no evaluation rows)."""
    return Layout({"train": len(lengths)}, 1, {"train": np.asarray(lengths)})


@torch.no_grad()
def teacher_logits(teacher, ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray, batch_size: int):
    """Yields the teacher's logits (n, V) float32 for consecutive batches of samples, rows in sample order."""
    kind = Sequence(0)
    for i in range(0, len(starts), batch_size):
        s, n = starts[i : i + batch_size], lengths[i : i + batch_size]
        x = ids[np.minimum(s[:, None] + np.arange(int(n.max()))[None, :], len(ids) - 1)]  # padding: masked below
        batch = pad_batch(x, n)
        yield kind.rows(teacher(batch["x"]), batch).float()


def write_store(path: Path, m: Manifest, arrays: dict[str, np.ndarray], lengths: np.ndarray):
    """A finished store from whole arrays (n rows) and its samples' lengths, one write_block per block (with
    its samples.parquet part), then finalize. -> the opened store."""
    layout = window_layout(lengths)
    w = CacheWriter.open(path, m)
    for b in w.pending_blocks():
        s, e = w.block_rows(b)
        w.write_block(b, {k: v[s:e] for k, v in arrays.items()}, span_table(layout.names, layout.starting_in(s, e), None))
    w.finalize()
    return open_store(path)


def lm_ce(model, samples: SplitSamples, batch_samples: int = 16) -> float:
    """Mean next-token cross-entropy (nats) of `model` over every sample of split 0, as the evaluate stage
    computes it (kd_pipeline.evaluation.split_metrics)."""
    from kd_pipeline.evaluation import split_metrics

    return split_metrics({"m": model}, samples, 0, len(samples.datasets[0]), batch_samples)["m"]["cross_entropy"]


def id_injection(V: int, top1: np.ndarray, base: int, seed: int = 0) -> np.ndarray:
    """(base,) distinct ids in [0, V): how the benchmarks get targets at a vocabulary V > base without a model of
    that vocabulary. The teacher's distribution is kept and its ids renamed by this fixed random injection (the
    other V - base ids have zero mass); the teacher's most frequent top-1 id becomes V - 1, so stored rows
    carry the largest ids. top1: (N,) the teacher's argmax ids."""
    if V == base:
        return np.arange(base)
    f = np.random.default_rng(seed).choice(V, size=base, replace=False)
    j = int(np.bincount(top1, minlength=base).argmax())
    f[f == V - 1] = f[j]  # keep the map injective
    f[j] = V - 1
    return f
