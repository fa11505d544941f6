"""The teacher pass: the frozen teacher, run once over the store's samples, written block by block.

For each pending block (chunk_rows rows) the samples overlapping it (kd_pipeline/layout.py) are fetched by a
DataLoader (`data.num_workers` processes; pinned memory on CUDA) in `cache.batch_size` batches, run through the
teacher under `torch.inference_mode` in `cache.teacher_dtype`, turned into rows by the kind, and reduced on the
teacher's device to the store's targets (top-k or sampled ids, relative values, lse) and features. Each block's
arrays are copied to the host once (non-blocking, into pinned buffers on CUDA) and handed to a writer thread,
which writes them, the block's samples.parquet rows and its completion marker while the teacher computes the
next block. A block whose teacher output is not finite is refused before anything of it is written, naming
the split and sample id: the store stays incomplete and resumable.

Blocks are independent: a sample straddling two blocks (sequence stores) is run for both, so any subset of
blocks can be computed by any process (resume; rank r of a torchrun pass takes blocks b % world == r).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Callable

import numpy as np
import torch
from torch import nn

from .data import SplitSamples, batch_loader, batches_of
from .errors import DataError
from .hooks import capture
from .layout import Layout, Span
from .progress import progress
from .store import CacheWriter, Manifest
from .store.format import indices_dtype
from .store.values import encode_targets, to_host
from .store.samples_parts import span_table
from .targets import teacher_rows


def _forward(teacher: nn.Module, batch: dict, kind, features: dict[str, str], device, dtype, out: dict, views=None) -> dict[str, torch.Tensor]:
    """One batch through the teacher -> row logits (n, C) float32 and feature rows, on the device.
    views: kd_pipeline.views.Views (the batch's samples become their augmented views' rows) or None."""
    if views is not None:
        batch = views.expand(batch)
    x = batch["x"].to(device, non_blocking=True)
    if x.is_floating_point():
        x = x.to(dtype)
    on_dev = {**batch, "x": x}
    rows = {"logits": kind.rows(teacher(x), on_dev).float()}
    for name in features:
        rows[f"features/{name}"] = kind.rows(out[name], on_dev)
    for name, a in kind.row_arrays(batch).items():
        rows[name] = a.to(device)
    if views is not None:
        rows["view_seed"] = batch["view_seed"].to(device)
    return rows


def probe_features(teacher: nn.Module, samples: SplitSamples, kind, features: dict[str, str], device, dtype, views=None) -> dict[str, list[int]]:
    """Per-row shape of each cached feature, from a forward on the first sample of the first split."""
    batch = samples.head(1)
    with torch.inference_mode(), capture(teacher, features, "cache.features", "teacher") as out:
        rows = _forward(teacher, batch, kind, features, device, dtype, out, views)
    return {name: list(rows[f"features/{name}"].shape[1:]) for name in features}


def _not_finite(finite: torch.Tensor, span: Span, offset: int, names: list[str]) -> str | None:
    """finite: (n,) bool per written row. A message naming the first sample with a non-finite teacher output."""
    if bool(finite.all()):  # one sync per block
        return None
    row = int((~finite).nonzero()[0, 0]) + offset  # row within the span's rows
    i = int(np.searchsorted(np.cumsum(span.num_rows), row, side="right"))
    return f"split {names[int(span.split[i])]!r} sample {int(span.sample_id[i])}"


def _host(block: dict[str, torch.Tensor], m: Manifest) -> Callable[[], dict[str, np.ndarray]]:
    """Starts the device->host copy of a block; the returned function waits for it (in the writer thread)."""
    first = next(iter(block.values()))
    if first.device.type != "cuda":
        return lambda: to_host(block, m)
    pinned = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True) for k, v in block.items()}
    for k, v in block.items():
        pinned[k].copy_(v, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return lambda: (done.synchronize(), to_host(pinned, m))[1]


def teacher_pass(teacher: nn.Module, writer: CacheWriter, layout: Layout, samples: SplitSamples, kind,
                 features: dict[str, str], batch_size: int, device: torch.device, dtype: torch.dtype,
                 num_workers: int = 0, seed: int = 0, shard: int = 0, num_shards: int = 1, views=None) -> int:
    """Writes this shard's pending blocks (b % num_shards == shard); returns the rows written. views: the
    store's augmented views (kd_pipeline/views.Views; `batch_size` then counts samples, not rows) or None.
    Raises DataError naming split and sample if the teacher's output for it is not finite."""
    m = writer.manifest
    teacher = teacher.to(device=device, dtype=dtype).eval().requires_grad_(False)
    pending = writer.pending_blocks(shard, num_shards)

    spans: deque[Span] = deque()  # each pending block's samples, from keys() to the loop below

    def keys():  # what the DataLoader fetches: every pending block's samples, in batches that never straddle blocks
        for b in pending:
            s = layout.overlapping(*writer.block_rows(b))
            spans.append(s)
            for a in range(0, len(s), batch_size):
                yield s.split[a : a + batch_size], s.sample_id[a : a + batch_size]

    batches = batches_of(batch_loader(samples, keys(), num_workers, pin_memory=device.type == "cuda"))
    rows_written = 0
    inflight: list[Future] = []
    with ThreadPoolExecutor(max_workers=1) as pool, progress("cache_teacher: teacher pass", len(pending), enabled=shard == 0) as advance, \
            torch.inference_mode(), capture(teacher, features, "cache.features", "teacher") as out:
        for b in pending:
            start, stop = writer.block_rows(b)
            batch = next(batches)  # the block's first batch: keys() has made its span by now
            s = spans.popleft()
            parts, labels = [], []
            gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + start)  # a resumed block draws the same
            for i in range(0, len(s), batch_size):
                batch = batch if i == 0 else next(batches)
                rows = _forward(teacher, batch, kind, features, device, dtype, out, views)
                logits = rows.pop("logits")  # (n, C): reduced to targets batch by batch, never kept for a block
                t = teacher_rows(logits, m, gen)
                # a NaN or +inf logit makes the row's max, so its lse, NaN; -inf (a masked class) is allowed
                parts.append({**t, **rows, "finite": torch.isfinite(t["lse"]).all(dim=1)})
                labels.append(kind.sample_labels(batch))
            cut = slice(start - int(s.row0[0]), stop - int(s.row0[0]))
            rows = {k: torch.cat([p[k] for p in parts])[cut] for k in parts[0]}
            bad = _not_finite(rows.pop("finite"), s, cut.start, layout.names)
            if bad:
                raise DataError(f"cache_teacher: the teacher's output for {bad} is not finite (NaN or inf); block {b} "
                                f"(rows {start}..{stop}) was not written. Fix that input (or the teacher) and rerun")
            block = encode_targets({k: rows.pop(k) for k in ("values", "ids", "lse", "counts") if k in rows}, m)
            block.update({k: v.to(getattr(torch, writer.specs[k][1])) for k, v in rows.items()})
            fetch = _host(block, m)
            write = lambda b=b, fetch=fetch, s=s, labels=_labels(labels, s, start), start=start: writer.write_block(  # noqa: E731
                b, fetch(), span_table(layout.names, s.take(s.row0 >= start), labels))  # the table too: off this thread
            inflight.append(pool.submit(write))
            while len(inflight) > 1:  # at most one block waiting behind the one being written
                inflight.pop(0).result()
            rows_written += stop - start
            advance(1, stop - start)
        for f in inflight:
            f.result()
    writer.wait_for_sync_point()  # before rank 0 finalizes (and removes the sync records)
    return rows_written


def _labels(labels: list, s: Span, start: int) -> np.ndarray | None:
    """Labels (n,) of the span's samples that start in the block, or None (sequence: no sample labels)."""
    if labels[0] is None:
        return None
    return torch.cat(labels).numpy()[s.row0 >= start]


def build_manifest(cfg, summary: dict, layout: Layout, teacher_sha256: str, feature_shapes: dict[str, list[int]],
                   views: dict | None = None) -> Manifest:
    """The manifest of the store `cfg` describes, for the data summary of the prepare_data stage.
    views: the view transform's record (kd_pipeline.views.transform_info) when cache.views is set."""
    from . import __version__

    c, V = cfg.cache, cfg.data.num_classes
    sampled = c.targets == "sampled"
    sizes = {n: int(k) for n, k in zip(layout.names, layout.sizes)}
    kwargs = dict(cfg.data.kwargs)
    if cfg.kind == "sequence":
        kwargs["context"] = cfg.sequence.context
    feat_dtype = "float16" if c.values_dtype == "uint8" else c.values_dtype
    return Manifest(
        format="kd-cache",
        version=1,
        kind=cfg.kind,
        num_classes=V,
        top_k=min(c.draws, V) if sampled else c.top_k,
        temperatures=list(c.temperatures),
        values_dtype=c.values_dtype,
        indices_dtype=indices_dtype(V),
        indices_scheme="packed" if c.ids == "packed" or (c.ids == "auto" and cfg.kind == "sequence") else "plain",
        values_scheme="q8" if c.values_dtype == "uint8" else "relative",
        targets=c.targets,
        sample_draws=c.draws if sampled else None,
        sample_temperature=c.temperatures[0] if sampled else None,
        num_rows=layout.num_rows,
        chunk_rows=c.chunk_rows,
        row_order="interleaved",
        teacher={"factory": cfg.teacher.factory, "kwargs": dict(cfg.teacher.kwargs), "checkpoint_sha256": teacher_sha256,
                 "outputs": cfg.sequence.teacher_outputs if cfg.kind == "sequence" else None},
        char_offsets=bool(summary.get("char_offsets")),
        loss_mask=bool(summary.get("loss_mask")),
        dataset={
            "factory": cfg.data.factory,
            "kwargs": kwargs,
            "splits": list(sizes),
            "split_sizes": sizes,
            "num_samples": layout.num_samples,
            "fingerprint": summary["fingerprint"],
            "eval_split": cfg.data.test_split,
        },
        features={n: {"shape": s, "dtype": feat_dtype, "module": c.features[n]} for n, s in feature_shapes.items()},
        views=None if views is None else {"count": c.views.count, "transform": views, "seed": cfg.seed},
        complete=False,
        created_with=f"kd-pipeline {__version__}",
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
