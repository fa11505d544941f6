"""Shared by the LM benchmarks: the LM track's trained teacher and its held-out tokens (from a finished
`kd run examples/lm/pipeline.yaml`), and a manifest for any target scheme."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from kd_pipeline.config import load_config
from kd_pipeline.lm.common import load_teacher
from kd_pipeline.lm.tokenizer import load_split, windows
from kd_pipeline.store import Manifest
from kd_pipeline.store.format import indices_dtype

PIPELINE = Path(os.environ.get("KD_LM_PIPELINE", "bench/lm_pipeline.yaml"))


def lm_setup(split: str = "val"):
    """-> cfg, teacher (eval, CPU), (ids, starts, lengths) of `split`."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    cfg = load_config(PIPELINE)
    teacher = load_teacher(cfg)
    ids, offsets = load_split(cfg.out_dir / "tokens", split, cfg.data.num_classes)
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
