"""`kd merge`: several stores of the same data -> one ensemble store holding their weighted mixture.

The merged store is a normal, complete store (the reader validates it like any other): top-K ids of the
mixture sum_j w_j p_j at one temperature tau (tail rule in kd_pipeline/mixture.py), values in the relative
scheme, lse absorbing their rounding, the exact tail mass. A mixture of softmaxes is not one softmax at
several temperatures, so it declares tau alone: a student must distil from it at tau. Its manifest keeps
every source's manifest and weight under `sources`; features are not merged (teachers' features differ in
meaning and shape). Work is block by block, so stores of any size merge in bounded memory, and a killed
merge resumes (same output manifest: finished blocks are kept, as for the teacher pass).
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .errors import ConfigError, StoreError
from .losses import find_temperature
from .mixture import as_relative, mixture_topk, teacher_probs
from .store import CacheStore, CacheWriter, Manifest, open_store
from .store.format import INPUT_ARRAYS, indices_dtype
from .store.values import decode_values, encode_targets, to_host


def parse_weights(text: str | None) -> list[float] | None:
    """'0.7,0.3' -> [0.7, 0.3]; None -> None (equal weights). ConfigError naming --weights otherwise."""
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"--weights: {text!r} is not a comma-separated list of numbers") from None


def merge_stores(paths: Sequence[str | Path], out: str | Path, weights: Sequence[float] | None = None,
                 temperature: float | None = None, top_k: int | None = None) -> Manifest:
    """Writes the mixture of the stores at `paths` into a store at `out`; returns its manifest.

    weights: one > 0 per store, normalised to sum 1 (None: equal). temperature: the tau of the mixture,
    which every store must declare (None: the first of the first store's temperatures that all declare).
    top_k: ids kept per row, 1..num_classes (None: min(num_classes, sum of the stores' k), which keeps every
    stored id). Raises ConfigError for bad arguments, StoreError for stores that cannot be mixed (other data,
    class count, rows, kind, sampled targets, an undeclared temperature), one line naming the stores.
    """
    paths, out = [Path(p) for p in paths], Path(out)
    if len(paths) < 2:
        raise ConfigError(f"kd merge: needs at least two stores, got {len(paths)}")
    w = _normalised(weights, len(paths))
    for p in paths:
        if out.resolve() == p.resolve():
            raise ConfigError(f"--out {out}: is one of the stores to merge; choose another folder")
    stores = [open_store(p) for p in paths]  # validated like any store a student reads
    sources = [_Source(s) for s in stores]
    try:
        _check_same_data(stores)
        tau, cols = _temperature(stores, temperature)
        C = stores[0].manifest.num_classes
        k = min(C, sum(s.manifest.top_k for s in stores)) if top_k is None else top_k
        if not 1 <= k <= C:
            raise ConfigError(f"--top-k: must be between 1 and num_classes ({C}), got {k}")
        with CacheWriter.open(out, merged_manifest(stores, w, tau, k)) as writer:
            for b in writer.pending_blocks():  # a killed merge resumes here: finished blocks are kept
                start, stop = writer.block_rows(b)
                blocks = [s.rows(start, stop) for s in sources]
                samples = _same_samples(stores, start, stop)
                writer.write_block(b, merge_rows(blocks, stores, cols, w, tau, writer.manifest, start), samples)
            return writer.finalize()
    finally:
        for s in [*sources, *stores]:
            s.close()


def merge_rows(blocks: list[dict[str, np.ndarray]], stores: list[CacheStore], cols: list[int], weights: list[float],
               tau: float, m: Manifest, start: int = 0) -> dict[str, np.ndarray]:
    """The same rows of every source (arrays as stored) -> the merged store's arrays for those rows."""
    probs, ids = [], []
    for blk, s, c in zip(blocks, stores, cols):
        probs.append(teacher_probs(decode_values(blk, s.manifest.values_scheme), blk["lse"][:, c], tau))
        ids.append(blk["topk_indices"])
    p, i = mixture_topk(probs, ids, weights, m.num_classes, m.top_k)
    rel, lse = as_relative(p, tau)
    t = {"values": torch.from_numpy(rel), "ids": torch.from_numpy(i.astype(np.int64)), "lse": torch.from_numpy(lse)}
    out = to_host(encode_targets(t, m), m)
    for name in INPUT_ARRAYS:  # what a row's input is (tokens, text offsets, loss mask, augmented views' seeds)
        if name not in m.array_specs():
            continue
        for blk, s in zip(blocks[1:], stores[1:]):
            if not np.array_equal(blk[name], blocks[0][name]):
                bad = start + int(np.flatnonzero(blk[name] != blocks[0][name])[0])
                raise StoreError(f"{s.path}: {name} row {bad} differs from {stores[0].path}'s; stores to merge must hold the same input rows")
        out[name] = blocks[0][name]
    return out


def merged_manifest(stores: list[CacheStore], weights: list[float], tau: float, k: int) -> Manifest:
    """The ensemble store's manifest: the first store's data and chunking, one temperature, relative values
    in the widest of the sources' float dtypes, no features, and `sources` = [{weight, manifest}, ...]."""
    from . import __version__

    m0 = stores[0].manifest
    sources = [{"weight": w, "manifest": s.manifest.model_dump(mode="json")} for s, w in zip(stores, weights)]
    ident = [[s.manifest.teacher.model_dump(mode="json"), w] for s, w in zip(stores, weights)]
    return Manifest(
        format=m0.format,
        version=m0.version,
        kind=m0.kind,
        num_classes=m0.num_classes,
        top_k=k,
        temperatures=[tau],
        values_dtype="float32" if any(s.manifest.values_dtype == "float32" for s in stores) else "float16",
        indices_dtype=indices_dtype(m0.num_classes),
        values_scheme="relative",
        targets="topk",
        num_rows=m0.num_rows,
        chunk_rows=m0.chunk_rows,
        char_offsets=m0.char_offsets,
        loss_mask=m0.loss_mask,
        # not a model anyone can build: names the mixture; the sha256 identifies its teachers and weights
        teacher={
            "factory": "ensemble",
            "kwargs": {"weights": list(weights), "temperature": tau, "tail": "even"},
            "checkpoint_sha256": hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest(),
        },
        dataset=m0.dataset.model_dump(mode="json"),
        views=m0.views.model_dump(mode="json") if m0.views is not None else None,
        complete=False,
        created_with=f"kd-pipeline {__version__}",
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        sources=sources,
    )


def _normalised(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n:
        raise ConfigError(f"--weights: {len(weights)} weights for {n} stores")
    if not all(math.isfinite(x) and x > 0 for x in weights):
        raise ConfigError(f"--weights: each must be a finite number > 0, got {list(weights)}")
    total = sum(weights)
    return [x / total for x in weights]


def _check_same_data(stores: list[CacheStore]) -> None:
    """Mixing is per row: every store must hold the same rows of the same data."""
    s0, m0 = stores[0], stores[0].manifest
    for s in stores:
        m = s.manifest
        if m.targets != "topk":
            raise StoreError(f"{s.path}: holds sampled targets (ids drawn from the teacher, not its top ids); kd merge mixes top-k stores only")
        for what, a, b in (("kind", m.kind, m0.kind), ("num_classes", m.num_classes, m0.num_classes),
                           ("dataset fingerprint", m.dataset.fingerprint, m0.dataset.fingerprint), ("num_rows", m.num_rows, m0.num_rows),
                           ("views", m.views and m.views.model_dump(), m0.views and m0.views.model_dump())):
            if a != b:
                raise StoreError(f"{s.path}: {what} {a} differs from {s0.path}'s {b}; kd merge mixes teachers of the same data")


def _same_samples(stores: list[CacheStore], start: int, stop: int):
    """The samples.parquet rows of the samples starting in [start, stop), the same in every store (checked
    block by block, so the tables are never held whole) -> that part of the first store's table."""
    first = stores[0].samples.block(start, stop)
    for s in stores[1:]:
        got = s.samples.block(start, stop)
        if any(not np.array_equal(got[k], first[k]) for k in first):
            raise StoreError(f"{s.path}: samples.parquet differs from {stores[0].path}'s at rows {start}..{stop} (other samples, order or labels); kd merge mixes teachers of the same data")
    return stores[0].samples.block_table(start, stop)


def _temperature(stores: list[CacheStore], tau: float | None) -> tuple[float, list[int]]:
    """-> (tau, the lse column of tau in each store)."""
    if tau is not None and not (math.isfinite(tau) and tau > 0):
        raise ConfigError(f"--temperature: must be a number > 0, got {tau}")
    if tau is None:
        common = [t for t in stores[0].manifest.temperatures if all(find_temperature(s.manifest.temperatures, t) is not None for s in stores)]
        if not common:
            listed = "; ".join(f"{s.path}: {s.manifest.temperatures}" for s in stores)
            raise StoreError(f"no temperature is declared by every store ({listed}); the mixture at tau needs each teacher's lse at tau")
        tau = common[0]
    cols = []
    for s in stores:
        c = find_temperature(s.manifest.temperatures, tau)
        if c is None:
            raise StoreError(f"{s.path}: does not declare temperature {tau} (it has {s.manifest.temperatures}); the mixture at tau needs each teacher's lse at tau")
        cols.append(c)
    return tau, cols


class _Source:
    """Rows of a source store read from its whole blocks, each checked (sha256 and content) when read; the
    last block is kept, so a source chunked more coarsely than the output is still read once."""

    def __init__(self, store: CacheStore):
        targets = {n: a for n, a in store.arrays.items() if not n.startswith("features/")}  # features: not merged
        self.store = CacheStore(store.path, store.manifest, targets, store.samples, store.markers)
        self.last: tuple[int, dict[str, np.ndarray]] | None = None

    def _block(self, b: int) -> dict[str, np.ndarray]:
        if self.last is None or self.last[0] != b:
            blk = self.store.read_block(b)
            self.store.check_block(b, blk)
            self.last = (b, blk)
        return self.last[1]

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        cr = self.store.manifest.chunk_rows
        parts = []
        for b in range(start // cr, (stop - 1) // cr + 1):
            b0 = b * cr
            parts.append({n: a[max(start, b0) - b0 : stop - b0] for n, a in self._block(b).items()})
        return {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}

    def close(self) -> None:
        self.store.close()
