"""Multi-teacher targets: the weighted mixture sum_j w_j p_j of several teachers' distributions at one
temperature, from their top-k rows, as top-K ids + one tail bucket (what the student's loss reads).

Teacher j knows its k_j stored probabilities p_j(i) exactly and only the total mass of the rest,
tail_j = 1 - sum_{i in S_j} p_j(i). The mixture needs p_j(i) also for ids another teacher stored.
**Tail rule (even spread):** teacher j gives every id it did not store the same share of its tail,
    p~_j(i) = p_j(i)                  for i in S_j (its stored ids)
    p~_j(i) = tail_j / (C - k_j)      for every other id (0 when k_j = C),
and the merged target is the top-K of the dense mixture M = sum_j w_j p~_j, its tail bucket holding the
exact remaining mass 1 - sum of the K kept. Why this rule: the ids a teacher did not store are
indistinguishable to it (it kept no information about how its tail is spread), so the only choice that
treats them alike is the even spread; the other candidate, "nothing to the union of ids, all of the tail
to the bucket", gives an id that teacher A ranked 4th and teacher B 1st the mass w_B p_B(i) + 0, and moves
A's real mass on it to ids that neither teacher preferred. The even share never exceeds any stored
p_j(i) (the tail ids are each below the smallest stored one, so their mean is too), so p~_j keeps teacher
j's top-k order; it is the reconstruction `docs/store-format-sequence.md` calls `full`. When every
k_j = C it is no rule at all: M is the dense mixture exactly.

Consequence used below: every id that no teacher stored has the same mixture mass
    base = sum_j w_j tail_j / (C - k_j),
and M(i) = base + sum_{j: i in S_j} w_j (p_j(i) - tail_j / (C - k_j)) on the union U of the stored ids.
So M is known on all C ids from the union alone, and K may exceed |U| (the extra ids carry `base`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def teacher_probs(values: np.ndarray, lse: np.ndarray, tau: float) -> np.ndarray:
    """A store's decoded values (n, k) and its lse column for tau (n,) -> probabilities (n, k) float64.
    A row whose stored mass exceeds 1 by rounding (raw float16 logits) is scaled back to 1 (tail 0)."""
    p = np.exp(values.astype(np.float64) / tau - lse.astype(np.float64)[:, None])
    total = p.sum(axis=1, keepdims=True)
    return p / np.maximum(total, 1.0)


def mixture_topk(probs: Sequence[np.ndarray], ids: Sequence[np.ndarray], weights: Sequence[float],
                 num_classes: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of the mixture sum_j w_j p~_j under the even-spread tail rule (module docstring).

    probs[j], ids[j]: (n, k_j) teacher j's stored probabilities at one temperature (float64) and their
    distinct class ids; weights: w_j > 0 summing to 1; 1 <= k <= num_classes.
    Returns mixture probabilities (n, k) float64 sorted descending and their ids (n, k) int64; the mixture's
    tail mass is 1 - the row sum. Ids beyond the union of the stored ones (when k > |U|) are the smallest
    ids outside it; they all carry the same mass, so which ones does not change the distribution.
    """
    C = num_classes
    n = probs[0].shape[0]
    rows = np.arange(n, dtype=np.int64)[:, None]
    base = np.zeros(n)  # (n,) mixture mass of an id no teacher stored
    keys, deltas = [], []
    for p, i, w in zip(probs, ids, weights):
        kj = p.shape[1]
        share = np.clip(1.0 - p.sum(axis=1), 0.0, None) / (C - kj) if kj < C else np.zeros(n)  # (n,)
        base += w * share
        keys.append(rows * C + i.astype(np.int64))  # (row, id) as one sortable key
        deltas.append(w * (p - share[:, None]))
    uniq, inv = np.unique(np.concatenate(keys, axis=1).ravel(), return_inverse=True)
    row_of, id_of = uniq // C, uniq % C  # sorted by row, then id
    mass = base[row_of] + np.bincount(inv.ravel(), weights=np.concatenate(deltas, axis=1).ravel(), minlength=len(uniq))
    count = np.bincount(row_of, minlength=n)  # |U| per row
    width = max(k, int(count.max()) if n else 0)
    cand_p = np.full((n, width), -1.0)  # -1: an empty slot, below any mass
    cand_i = np.zeros((n, width), np.int64)
    slot = np.arange(len(uniq)) - np.repeat(np.cumsum(count) - count, count)  # position within its row
    cand_p[row_of, slot] = np.maximum(mass, 0.0)  # >= 0 up to rounding
    cand_i[row_of, slot] = id_of
    _fill_outside_union(cand_p, cand_i, count, uniq, base, C, k)
    order = np.argsort(-cand_p, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(cand_p, order, axis=1), np.take_along_axis(cand_i, order, axis=1)


def _fill_outside_union(cand_p, cand_i, count, uniq, base, C: int, k: int) -> None:
    """Rows with |U| < k: slots |U|..k-1 get the smallest ids outside U, each with mass `base`. Among ids
    0..k-1 at most |U| are in U, so they always hold the k - |U| needed."""
    short = np.flatnonzero(count < k)
    if short.size == 0:
        return
    keys = short[:, None] * C + np.arange(k, dtype=np.int64)[None, :]  # (m, k) candidate (row, id) keys
    at = np.minimum(np.searchsorted(uniq, keys), len(uniq) - 1)  # uniq is sorted; np.isin would sort it again
    free = uniq[at] != keys  # (m, k) not in the row's union
    rank = np.cumsum(free, axis=1) - 1
    take = free & (rank < (k - count[short])[:, None])
    r, c = np.nonzero(take)
    dest = count[short][r] + rank[r, c]
    cand_p[short[r], dest] = base[short[r]]
    cand_i[short[r], dest] = c


def as_relative(p: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """Mixture probabilities (n, k), descending -> values relative to the row's top (n, k) and lse (n, 1),
    float64, such that exp(v / tau - lse) = p: v = tau * log(p / p_top), lse = -log(p_top). This is the
    relative scheme of a teacher whose logits are tau * log M (softmax at tau gives M back, with
    logsumexp over all C ids of (tau log M - tau log M_top) / tau = log(1 / M_top))."""
    with np.errstate(divide="ignore"):
        logp = np.log(p)  # a zero-mass filler id: -inf, clamped by the value encoding
    return tau * (logp - logp[:, :1]), -logp[:, :1]
