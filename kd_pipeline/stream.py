"""Streaming a store for training: shuffled whole blocks, never one read per sample.

Each pass permutes the block order; `window` consecutive blocks of that order are read (one chunk read per
array, concurrently), their rows are shuffled together, and cut into batches. The next window is read in a
background thread while the current one trains. Rows left over at the end of a window are carried into the
next, so every row is seen once per pass and batches are always full.
"""

from __future__ import annotations

import threading
from queue import Queue
from typing import Iterator, TypeVar

import numpy as np

from .store import CacheStore

T = TypeVar("T")


class BlockStream:
    def __init__(self, store: CacheStore, batch_size: int, window: int = 4, seed: int = 0, check: bool = True):
        self.store = store
        self.batch_size = batch_size
        self.window = window
        # Two generators: the reader thread draws block orders, the consumer row orders. One shared generator
        # would make the batch sequence depend on thread timing; two keep it a function of the seed (resume).
        self.block_rng, self.row_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
        self.check = check

    def _read_window(self, blocks: list[int]) -> dict[str, np.ndarray]:
        parts = []
        for b in blocks:
            block = self.store.read_block(b)
            if self.check:
                self.store.check_block(b, block)
            start, stop = self.store.block_rows(b)
            block["row"] = np.arange(start, stop, dtype=np.int64)
            parts.append(block)
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _windows(self) -> Iterator[list[int]]:
        while True:
            order = self.block_rng.permutation(self.store.num_blocks).tolist()
            for i in range(0, len(order), self.window):
                yield order[i : i + self.window]

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        """Infinite: yields dicts of arrays with `batch_size` rows (keys: arrays + "row")."""
        if self.store.manifest.num_rows == 0:
            return
        carry: dict[str, np.ndarray] | None = None
        for item in background(self._read_window(blocks) for blocks in self._windows()):
            if carry is not None:
                item = {k: np.concatenate([carry[k], item[k]]) for k in item}
            perm = self.row_rng.permutation(len(item["row"]))
            # One shuffled copy per window, then batches are views (same rows, same order as gathering
            # perm[i:i+B] per batch, but one vectorised gather per array instead of one per batch).
            item = {k: v[perm] for k, v in item.items()}
            n_full = len(perm) // self.batch_size * self.batch_size
            for i in range(0, n_full, self.batch_size):
                yield {k: v[i : i + self.batch_size] for k, v in item.items()}
            carry = {k: v[n_full:] for k, v in item.items()} if n_full < len(perm) else None


def background(produce: Iterator[T]) -> Iterator[T]:
    """Runs the generator `produce` one item ahead in a daemon thread (reads overlap training); its
    exceptions surface in the consumer; closing the consumer stops the producer."""
    q: Queue = Queue(maxsize=1)
    stop = threading.Event()

    def run():
        try:
            for item in produce:
                if stop.is_set():
                    return
                q.put(item)
        except BaseException as e:  # surfaced in the consumer
            q.put(e)

    threading.Thread(target=run, daemon=True).start()
    try:
        while True:
            item = q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while not q.empty():
            q.get_nowait()
