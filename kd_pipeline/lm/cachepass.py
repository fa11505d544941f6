"""The LM teacher pass: whole samples through the frozen teacher, one store row per token.

Store rows are the train samples back to back (sample s owns rows row0[s] .. row0[s] + length[s]). A block
of rows is computed from every sample overlapping it (a sample straddling two blocks is run twice, ~context
/ chunk_rows extra work), so blocks stay independent: resumable and shardable as in the foundation.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch import nn

from ..store import CacheWriter, Manifest
from ..store.ids import decode_ids, encode_ids
from ..store.values import decode_values, encode_values
from .batches import pad_samples
from .reconstruction import reconstruction_kl
from .targets import relative_logits, sampled_rows, topk_rows


@torch.no_grad()
def teacher_rows(teacher: nn.Module, ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray, batch_size: int,
                 device: torch.device, dtype: torch.dtype = torch.float32) -> Iterator[torch.Tensor]:
    """Yields the teacher's logits (n, V) float32 for consecutive batches of samples, rows in sample order."""
    for i in range(0, len(starts), batch_size):
        b = pad_samples(ids, starts[i : i + batch_size], lengths[i : i + batch_size])
        logits = teacher(b["x"].to(device))
        yield logits[b["mask"].to(device)].float()


def row_targets(logits: torch.Tensor, m: Manifest, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """(n, V) logits -> values (n, k) relative to the top, ids (n, k), lse (n, T)[, counts (n, k)]."""
    rel, lse = relative_logits(logits, tuple(m.temperatures))
    if m.targets == "sampled":
        v, i, c = sampled_rows(rel, m.sample_draws, m.sample_temperature, generator)
        return {"values": v, "ids": i, "lse": lse, "counts": c}
    v, i = topk_rows(rel, m.top_k)
    return {"values": v, "ids": i, "lse": lse}


def encode_rows(t: dict[str, torch.Tensor], m: Manifest) -> dict[str, np.ndarray]:
    """Targets -> the store's arrays (without `tokens`), in the manifest's dtypes.

    The stored lse is the normaliser under which the *decoded* values carry exactly the teacher's mass on
    the stored ids, lse' = lse + log(sum exp(v_dec / tau - lse) / sum exp(v / tau - lse)), so the tail mass
    1 - sum p_i read back is exact. Plain rounding can push the decoded mass past 1 - tail (8-bit steps are
    span/255 nats) and erase a small tail, which costs p_tail * log(p_tail / ~0) in the KL."""
    out = encode_values(t["values"].cpu().numpy(), m.values_scheme, m.values_dtype)
    out["topk_indices"] = encode_ids(t["ids"].cpu().numpy(), m)
    v = torch.from_numpy(t["values"].cpu().numpy()).double()  # (n, k) exact relative values
    v_dec = torch.from_numpy(decode_values(out, m.values_scheme)).double()
    valid = (t["counts"].cpu() > 0) if "counts" in t else torch.ones_like(v, dtype=torch.bool)
    lse = t["lse"].cpu().double()  # (n, T)
    taus = torch.tensor(m.temperatures, dtype=torch.float64)
    neg = torch.tensor(float("-inf"), dtype=torch.float64)
    exact = torch.logsumexp(torch.where(valid[:, None], v[:, None] / taus[None, :, None], neg), dim=2)  # (n, T)
    dec = torch.logsumexp(torch.where(valid[:, None], v_dec[:, None] / taus[None, :, None], neg), dim=2)
    out["lse"] = (lse + dec - exact).numpy().astype(np.float32)
    if "counts" in t:
        out["sample_counts"] = t["counts"].cpu().numpy().astype(np.uint16)
    return out


def rows_from_arrays(a: dict[str, np.ndarray], m: Manifest) -> dict[str, torch.Tensor]:
    """Store arrays of some rows -> values (decoded, float32), ids (int64), lse[, counts]: what a loss reads."""
    t = {
        "values": torch.from_numpy(decode_values(a, m.values_scheme)),
        "ids": torch.from_numpy(decode_ids(a, m).astype(np.int64)),
        "lse": torch.from_numpy(np.ascontiguousarray(a["lse"], dtype=np.float32)),
    }
    if "sample_counts" in a:
        t["counts"] = torch.from_numpy(a["sample_counts"].astype(np.int64))
    return t


def sequence_pass(teacher: nn.Module, writer: CacheWriter, ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                  batch_size: int, device: torch.device, dtype: torch.dtype, seed: int, shard: int = 0, num_shards: int = 1) -> int:
    """Writes this shard's pending blocks of a sequence store; returns rows written."""
    from ..cachepass import write_blocks

    m = writer.manifest
    row0 = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    ends = row0 + lengths
    teacher = teacher.to(device=device, dtype=dtype).eval().requires_grad_(False)

    def compute(start: int, stop: int) -> dict[str, np.ndarray]:
        s0 = int(np.searchsorted(ends, start, side="right"))  # first sample ending after `start`
        s1 = int(np.searchsorted(row0, stop, side="left"))  # samples starting before `stop`
        gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + start)  # resumes reproduce a block
        parts = [row_targets(z, m, gen) for z in teacher_rows(teacher, ids, starts[s0:s1], lengths[s0:s1], batch_size, device, dtype)]
        cut = slice(start - int(row0[s0]), stop - int(row0[s0]))
        arrays = encode_rows({k: torch.cat([p[k] for p in parts])[cut] for k in parts[0]}, m)
        toks = np.concatenate([ids[a : a + n] for a, n in zip(starts[s0:s1].tolist(), lengths[s0:s1].tolist())])
        arrays["tokens"] = toks[cut].astype(np.int32)
        return arrays

    return write_blocks(writer, compute, shard, num_shards)


@torch.no_grad()
def measure_reconstruction(teacher: nn.Module, m: Manifest, ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                           max_rows: int, batch_size: int, device: torch.device, dtype: torch.dtype, seed: int) -> dict | None:
    """Mean KL(teacher || reconstruction from the stored arrays) over up to max_rows held-out rows, at
    temperatures[0]: the full logits are at hand here, and the rows go through the exact encode/decode path."""
    if max_rows <= 0 or len(starts) == 0:
        return None
    n = int(np.searchsorted(np.cumsum(lengths), max_rows, side="left")) + 1
    gen = torch.Generator(device=device).manual_seed(seed)
    comp, full, rows = 0.0, 0.0, 0
    for z in teacher_rows(teacher, ids, starts[:n], lengths[:n], batch_size, device, dtype):
        t = rows_from_arrays(encode_rows(row_targets(z, m, gen), m), m)
        valid = t["counts"] > 0 if "counts" in t else None
        c, f = reconstruction_kl(z.cpu(), t["values"], t["ids"], t["lse"][:, 0], m.temperatures[0], valid)
        comp, full, rows = comp + float(c.sum()), full + float(f.sum()), rows + len(c)
    return {"compression": comp / rows, "full": full / rows, "rows": rows, "temperature": m.temperatures[0]}
