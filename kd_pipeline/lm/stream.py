"""Streaming a sequence store for the student: shuffled whole blocks, batches of whole samples.

Like `kd_pipeline.stream.BlockStream`, each pass permutes the blocks and reads `window` of them at a time
in a background thread (whole chunks, checked with `CacheStore.check_block`); here a block contributes the
samples that *start* in it, read together with the next block's rows when its last sample runs on. The
samples of a window are shuffled and cut into batches of `batch_size` samples; left-overs carry over.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from ..store import CacheStore
from ..stream import BlockStream, background
from ..targets import Targets
from .batches import pad_samples
from .cachepass import rows_from_arrays

Window = tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]  # arrays (n, ...), sample starts, lengths


class SampleStream(BlockStream):
    """BlockStream's block order and windows; batches of whole samples instead of rows."""

    def __init__(self, store: CacheStore, batch_size: int, window: int = 4, seed: int = 0, check: bool = True):
        super().__init__(store, batch_size, window, seed, check)
        t = store.samples
        order = np.argsort(t["row"].to_numpy(), kind="stable")
        self.row0 = t["row"].to_numpy()[order]
        self.lengths = t["num_rows"].to_numpy()[order]
        first_block = self.row0 // store.manifest.chunk_rows
        self.by_block = [np.flatnonzero(first_block == b) for b in range(store.num_blocks)]

    def _read(self, blocks: list[int]) -> Window:
        cache: dict[int, dict[str, np.ndarray]] = {}
        parts, starts, lengths, n = [], [], [], 0
        C = self.store.manifest.chunk_rows
        for b in blocks:
            sel = self.by_block[b]
            if not len(sel):
                continue
            r0, r1 = int(self.row0[sel[0]]), int(self.row0[sel[-1]] + self.lengths[sel[-1]])
            span = list(range(r0 // C, (r1 - 1) // C + 1))
            for bb in span:
                if bb not in cache:
                    cache[bb] = self.store.read_block(bb)
                    if self.check:
                        self.store.check_block(bb, cache[bb])
            a = {k: np.concatenate([cache[bb][k] for bb in span])[r0 - span[0] * C : r1 - span[0] * C] for k in cache[span[0]]}
            parts.append(a)
            starts.append(self.row0[sel] - r0 + n)
            lengths.append(self.lengths[sel])
            n += r1 - r0
        arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
        return arrays, np.concatenate(starts or [np.zeros(0, np.int64)]), np.concatenate(lengths or [np.zeros(0, np.int64)])

    def _batch(self, w: Window, sel: np.ndarray) -> dict:
        arrays, starts, lengths = w
        batch = pad_samples(arrays["tokens"], starts[sel], lengths[sel])
        rows = _rows(starts[sel], lengths[sel])
        t = rows_from_arrays({k: v[rows] for k, v in arrays.items() if k != "tokens"}, self.store.manifest)
        m = self.store.manifest
        batch["targets"] = Targets(t["values"], t["ids"], t["lse"], tuple(m.temperatures), m.num_classes, counts=t.get("counts"))
        return batch

    def __iter__(self) -> Iterator[dict]:
        """Infinite: dicts with x, y, mask (B, T) and targets (Targets over the mask's rows, in row order)."""
        if self.store.manifest.num_rows == 0:
            return
        carry: Window | None = None
        for w in background(self._read(blocks) for blocks in self._windows()):
            if not len(w[1]):
                continue
            if carry is not None:
                w = _merge(carry, w)
            perm = self.row_rng.permutation(len(w[1]))
            full = len(perm) // self.batch_size * self.batch_size
            for i in range(0, full, self.batch_size):
                yield self._batch(w, perm[i : i + self.batch_size])
            carry = _subset(w, perm[full:]) if full < len(perm) else None


def _rows(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The row numbers of samples (start, length), in order."""
    return np.concatenate([np.arange(a, a + n) for a, n in zip(starts.tolist(), lengths.tolist())])


def _subset(w: Window, sel: np.ndarray) -> Window:
    arrays, starts, lengths = w
    rows = _rows(starts[sel], lengths[sel])
    new_starts = np.concatenate([[0], np.cumsum(lengths[sel])[:-1]]).astype(np.int64)
    return {k: v[rows] for k, v in arrays.items()}, new_starts, lengths[sel]


def _merge(a: Window, b: Window) -> Window:
    n = len(next(iter(a[0].values())))
    return {k: np.concatenate([a[0][k], b[0][k]]) for k in b[0]}, np.concatenate([a[1], b[1] + n]), np.concatenate([a[2], b[2]])


def lm_kd_step(student, alpha: float, tau: float):
    """alpha * next-token CE + (1 - alpha) * tau^2 * KL to the stored targets (top-k + tail, or sampled)."""
    from ..losses import kd_loss

    def step(batch):
        logits = student(batch["x"])[batch["mask"]]  # (n, V): the store's rows of this batch, in order
        return kd_loss(logits, batch["y"][batch["mask"]], batch["targets"], tau, alpha)

    return step

