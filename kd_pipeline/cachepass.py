"""The teacher pass: frozen teacher, run once over the cached rows, written block by block.

Per pending block (chunk_rows rows): forward in `batch_size` slices on the teacher's device, top-k and
lse there, then one device->host copy of the block and a hand-off to a writer thread. The writer thread
writes the block's chunks and its completion marker while the teacher computes the next block, so the
pass runs at the teacher's speed (bench/teacher_pass.py measures the ratio).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch
from torch import nn

from .hooks import capture
from .progress import progress
from .store import CacheWriter
from .targets import topk_targets



def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def probe_features(teacher: nn.Module, x: torch.Tensor, features: dict[str, str], device: torch.device, dtype: torch.dtype) -> dict[str, list[int]]:
    """Per-row output shape of each feature module, from a forward on two rows."""
    with capture(teacher, features, "cache.features", "teacher") as out:
        teacher(x[:2].to(device=device, dtype=dtype if x.is_floating_point() else x.dtype))
    return {name: list(out[name].shape[1:]) for name in features}


@torch.no_grad()
def _block_targets(teacher, x, writer: CacheWriter, feats: dict[str, str], batch_size: int, device, dtype) -> dict[str, torch.Tensor]:
    m = writer.manifest
    # Cast each batch to the store's dtype on the device, before concatenating and copying to the host:
    # half the bytes to move for float16, and torch's cast is ~10x faster than numpy's float32->float16.
    to = {name: getattr(torch, dt) for name, (_, dt) in writer.specs.items()}
    parts: dict[str, list[torch.Tensor]] = {}
    with capture(teacher, feats, "cache.features", "teacher") as out:
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].to(device, non_blocking=True)
            if xb.is_floating_point():
                xb = xb.to(dtype)
            t = topk_targets(teacher(xb), m.top_k, tuple(m.temperatures))
            got = {"topk_logits": t.values, "topk_indices": t.indices, "lse": t.lse}
            got.update({f"features/{n}": out[n] for n in feats})
            for k, v in got.items():
                parts.setdefault(k, []).append(v.to(to[k]))
    return {k: torch.cat(v) for k, v in parts.items()}


def _to_numpy(block: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """One device->host copy per array; _block_targets already cast each to the store's dtype."""
    return {k: v.to("cpu").numpy() for k, v in block.items()}


def write_blocks(writer: CacheWriter, compute: Callable[[int, int], dict[str, np.ndarray]], shard: int = 0,
                 num_shards: int = 1, desc: str = "cache_teacher: teacher pass") -> int:
    """Writes this shard's pending blocks; compute(start, stop) -> the block's arrays (numpy, declared
    dtypes). The writer thread writes block b while compute runs on block b+1. Returns rows written."""
    pending = writer.pending_blocks(shard, num_shards)
    rows = 0
    inflight: list[Future] = []
    with ThreadPoolExecutor(max_workers=1) as pool, progress(desc, len(pending)) as advance:
        for b in pending:
            start, stop = writer.block_rows(b)
            inflight.append(pool.submit(writer.write_block, b, compute(start, stop)))
            while len(inflight) > 1:  # at most one block waiting behind the one being written
                inflight.pop(0).result()
            rows += stop - start
            advance(1, stop - start)
        for f in inflight:
            f.result()
    return rows


def run_teacher_pass(
    teacher: nn.Module,
    inputs: torch.Tensor,
    writer: CacheWriter,
    features: dict[str, str],
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    shard: int = 0,
    num_shards: int = 1,
) -> int:
    """inputs: (R, ...) rows in store order. Writes this shard's pending blocks; returns rows written."""
    teacher = teacher.to(device=device, dtype=dtype).eval().requires_grad_(False)

    def compute(start: int, stop: int) -> dict[str, np.ndarray]:
        block = _block_targets(teacher, inputs[start:stop], writer, features, batch_size, device, dtype)
        return _to_numpy(block)

    return write_blocks(writer, compute, shard, num_shards)


def build_manifest(cfg, splits: dict, teacher_sha256: str, feature_shapes: dict[str, list[int]]):
    """The manifest for a classification store of `splits` (name -> (x, y)) in row order."""
    from datetime import datetime, timezone

    from . import __version__
    from .data import fingerprint
    from .store import Manifest
    from .store.format import indices_dtype

    sizes = {name: len(x) for name, (x, _) in splits.items()}
    c = cfg.cache
    return Manifest(
        format="kd-cache",
        version=1,
        kind="classification",
        num_classes=cfg.data.num_classes,
        top_k=c.top_k,
        temperatures=list(c.temperatures),
        values_dtype=c.values_dtype,
        indices_dtype=indices_dtype(cfg.data.num_classes),
        num_rows=sum(sizes.values()),
        chunk_rows=c.chunk_rows,
        teacher={"factory": cfg.teacher.factory, "kwargs": dict(cfg.teacher.kwargs), "checkpoint_sha256": teacher_sha256},
        dataset={
            "factory": cfg.data.factory,
            "kwargs": dict(cfg.data.kwargs),
            "splits": list(sizes),
            "split_sizes": sizes,
            "num_samples": sum(sizes.values()),
            "fingerprint": fingerprint(splits),
        },
        features={n: {"shape": s, "dtype": c.values_dtype, "module": c.features[n]} for n, s in feature_shapes.items()},
        complete=False,
        created_with=f"kd-pipeline {__version__}",
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
