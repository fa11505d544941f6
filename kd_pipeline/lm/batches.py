"""Samples -> padded training batches. A sample is `length` consecutive tokens of one document; a batch
of B samples is right-padded to its longest (padding lives in memory only, never in the store)."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch


def pad_samples(ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> dict[str, torch.Tensor]:
    """-> x (B, T) int64 tokens (0-padded), y (B, T) int64 next token (-1 at each sample's last position and
    on padding: no label inside the sample), mask (B, T) bool real positions. T = max(lengths)."""
    B, T = len(starts), int(lengths.max())
    pos = np.arange(T)[None, :]
    mask = pos < lengths[:, None]
    gather = np.where(mask, starts[:, None] + pos, 0)
    x = np.where(mask, ids[gather], 0).astype(np.int64)
    y = np.full((B, T), -1, np.int64)
    has_next = pos < lengths[:, None] - 1
    y[has_next] = x[:, 1:][has_next[:, :-1]] if T > 1 else y[has_next]
    return {"x": torch.from_numpy(x), "y": torch.from_numpy(y), "mask": torch.from_numpy(mask)}


def sample_batches(ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray, batch_size: int, seed: int) -> Iterator[dict]:
    """Endless shuffled batches of whole samples (a fresh permutation per epoch)."""
    rng = np.random.default_rng(seed)
    bs = min(batch_size, len(starts))
    while True:
        perm = rng.permutation(len(starts))
        for i in range(0, len(perm) - bs + 1, bs):
            sel = perm[i : i + bs]
            yield pad_samples(ids, starts[sel], lengths[sel])


def lm_ce_step(model):
    """Hard-label next-token cross-entropy, mean over labelled positions."""
    import torch.nn.functional as F

    def step(batch):
        logits = model(batch["x"])
        return F.cross_entropy(logits.flatten(0, 1), batch["y"].flatten(), ignore_index=-1), {}

    return step
