"""Which store rows belong to which sample: the order the teacher pass writes and every reader follows.

Samples are ranked, and rows follow the ranks (a sample of n rows takes n consecutive rows).

- The cached splits (`train_split` + `transfer_splits`) are **interleaved in proportion to their sizes**:
  sample j of split s gets the key (2j + 1) / (2 n_s) and samples are taken in key order (ties: split order).
  Every block, and so every batch drawn from shuffled blocks, then holds the labelled split in its share of
  the data (1 row in 6 in the default pipeline) instead of all of it sitting in the first blocks, where 36 %
  of the student's batches had no labelled row and the CE term trained in bursts.
- The evaluation split follows, in its own order: its rows are never streamed to the student.

For one row per sample (classification) the layout is computed block by block in O(block) time and memory
(a sample's rank is a sum of integer divisions; the samples of a block are found by bisection), so a store of
any size needs no table of all samples. For sequence stores (n rows per sample) the first row of every sample
is kept, O(samples) = a `context`-th of the tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import DataError

MAX_SPLIT = 2**30  # samples per split: keeps (2j+1) * n inside int64


@dataclass
class Span:
    """Samples in rank order: split index (into Layout.names), sample id in its split, first row, rows."""

    split: np.ndarray  # (n,) int64
    sample_id: np.ndarray  # (n,) int64
    row0: np.ndarray  # (n,) int64
    num_rows: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.split)

    def take(self, sel) -> "Span":
        return Span(self.split[sel], self.sample_id[sel], self.row0[sel], self.num_rows[sel])


class Layout:
    def __init__(self, sizes: dict[str, int], n_interleaved: int, lengths: dict[str, np.ndarray] | None = None):
        """sizes: split -> samples, in store order; the first `n_interleaved` splits are interleaved, the rest
        appended in order. lengths: None (one row per sample) or split -> (n,) rows of each sample."""
        self.names = list(sizes)
        self.sizes = np.array([sizes[s] for s in self.names], dtype=np.int64)
        if (self.sizes > MAX_SPLIT).any():
            raise DataError(f"data: a split has more than {MAX_SPLIT:,} samples ({dict(sizes)}); split it further")
        self.k = n_interleaved
        self.num_samples = int(self.sizes.sum())
        self.n_mixed = int(self.sizes[: self.k].sum())
        self._starts = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)  # appended splits' first rank
        self._row0 = None
        if lengths is None:
            self.num_rows = self.num_samples
            return
        split, sid = self._all_samples()
        lens = np.concatenate([np.asarray(lengths[self.names[t]], np.int64) for t in range(len(self.names))]) if self.names else np.zeros(0, np.int64)
        flat = self._starts[split] + sid  # position of each sample in split-major order
        self._split, self._sid = split, sid
        self._row0 = np.concatenate([[0], np.cumsum(lens[flat])]).astype(np.int64)  # (S + 1,) by rank
        self.num_rows = int(self._row0[-1])

    # ---------------------------------------------------------------------------------------------- ranks
    def rank(self, t: int, j: np.ndarray) -> np.ndarray:
        """Rank of samples j (int64 array) of split t."""
        j = np.asarray(j, dtype=np.int64)
        if t >= self.k:
            return self.n_mixed + (self._starts[t] - self._starts[self.k]) + j
        r = j.copy()
        nt = int(self.sizes[t])
        for s in range(self.k):
            ns = int(self.sizes[s])
            if s == t or ns == 0:
                continue
            a = (2 * j + 1) * ns  # key(s, i) < key(t, j)  <=>  (2i + 1) * n_t < a
            c = (a // nt + 1) // 2 if s < t else ((a - 1) // nt + 1) // 2  # ties go to the earlier split
            r += np.clip(c, 0, ns)
        return r

    def _first_at_least(self, t: int, target: int) -> int:
        """Smallest j in [0, n_t] with rank(t, j) >= target (rank is increasing in j)."""
        nt = int(self.sizes[t])
        if nt and self.n_mixed:  # rank(t, j) is j * n_mixed / n_t within one per other split: look right there
            guess = target * nt // self.n_mixed
            lo, hi = max(0, guess - self.k - 2), min(nt, guess + self.k + 3)
            r = self.rank(t, np.arange(lo, hi, dtype=np.int64))
            if lo < hi and (lo == 0 or r[0] < target) and (hi == nt or r[-1] >= target):
                return lo + int(np.searchsorted(r, target, side="left"))
        lo, hi = 0, nt  # the guess missed (it should not): bisect
        while lo < hi:
            mid = (lo + hi) // 2
            if int(self.rank(t, np.array([mid]))[0]) >= target:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def ranked(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """The samples of ranks [lo, hi), in rank order -> (split index, sample id)."""
        if self._row0 is not None:
            return self._split[lo:hi], self._sid[lo:hi]
        parts = []
        for t in range(len(self.names)):
            j0, j1 = (self._first_at_least(t, lo), self._first_at_least(t, hi)) if t < self.k else (
                np.clip([lo - self.rank(t, np.array([0]))[0], hi - self.rank(t, np.array([0]))[0]], 0, self.sizes[t]))
            j = np.arange(int(j0), int(j1), dtype=np.int64)
            parts.append((np.full(len(j), t, np.int64), j, self.rank(t, j)))
        split, sid, rank = (np.concatenate(p) for p in zip(*parts)) if parts else (np.zeros(0, np.int64),) * 3
        order = np.argsort(rank, kind="stable")
        if not np.array_equal(rank[order], np.arange(lo, hi)):  # a permutation, or the maths above is wrong
            raise AssertionError(f"layout: ranks {lo}..{hi} are not covered exactly once")
        return split[order], sid[order]

    def _all_samples(self) -> tuple[np.ndarray, np.ndarray]:
        split = np.zeros(self.num_samples, np.int64)
        sid = np.zeros(self.num_samples, np.int64)
        for t in range(len(self.names)):
            j = np.arange(self.sizes[t], dtype=np.int64)
            r = self.rank(t, j)
            split[r], sid[r] = t, j
        return split, sid

    # ----------------------------------------------------------------------------------------------- rows
    def rows_of(self, lo: int, hi: int) -> Span:
        """Samples of ranks [lo, hi) with their rows."""
        split, sid = self.ranked(lo, hi)
        if self._row0 is None:
            return Span(split, sid, np.arange(lo, hi, dtype=np.int64), np.ones(hi - lo, np.int64))
        return Span(split, sid, self._row0[lo:hi], np.diff(self._row0[lo : hi + 1]))

    def overlapping(self, start: int, stop: int) -> Span:
        """Samples with at least one row in [start, stop), in row order (the first and last may run over)."""
        if self._row0 is None:
            return self.rows_of(start, stop)
        lo = int(np.searchsorted(self._row0[1:], start, side="right"))  # first sample ending after start
        hi = int(np.searchsorted(self._row0[:-1], stop, side="left"))  # samples starting before stop
        return self.rows_of(lo, hi)

    def starting_in(self, start: int, stop: int) -> Span:
        """Samples whose first row is in [start, stop): the rows of samples.parquet written with that block."""
        s = self.overlapping(start, stop)
        return s.take(s.row0 >= start)
