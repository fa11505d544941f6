"""`kd inspect`: what a store holds, read through the validating reader."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
from rich.table import Table

from .progress import make_console
from .store import CacheStore, open_store
from .store.values import decode_values

ENTROPY_LABEL = "entropy over stored ids + tail bucket"  # a lower bound of the teacher's entropy (see teacher_stats)


def teacher_stats(store: CacheStore) -> dict | None:
    """The teacher's mean entropy and mean confidence over the store's rows at temperatures[0], from the
    stored targets alone, reading one block at a time (only the arrays needed; features are not read).

    p_i = exp(v_i / tau - lse) for each stored id is exact; the tail (1 - sum p_i) is known only as a mass,
    so it counts as one bucket: H = -sum p_i log p_i - tail log tail. Merging classes never raises entropy,
    so this is a lower bound of the teacher's entropy (equal when the tail is ~0). Confidence = the largest
    stored p_i: the top-1 probability for top-k targets; for sampled targets the largest drawn one (a lower
    bound). None for an incomplete or empty store. Units: nats; probabilities in [0, 1]."""
    m = store.manifest
    if not m.complete or m.num_rows == 0:
        return None
    tau = m.temperatures[0]
    entropy = confidence = 0.0
    for p, tail in teacher_probabilities(store, range(m.num_blocks)):
        entropy += float((-_xlogx(p).sum(axis=1) - _xlogx(tail)).sum())
        confidence += float(p.max(axis=1).sum())
    return {
        "temperature": tau,
        "rows": m.num_rows,
        "mean_entropy_nats": entropy / m.num_rows,
        "entropy_is": f"{ENTROPY_LABEL}: a lower bound",
        "mean_confidence": confidence / m.num_rows,
        "confidence_is": "top-1 probability" if m.targets == "topk" else "largest probability among the drawn ids: a lower bound",
    }


def teacher_probabilities(store: CacheStore, blocks, t: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per block of `blocks`: the teacher's probabilities of the stored ids at temperatures[t], (n, k) float64
    (0 for a sampled store's padding), and the tail mass (n,), from the arrays the targets need alone."""
    m = store.manifest
    tau = m.temperatures[t]
    names = [n for n in ("topk_logits", "value_scale", "sample_counts", "lse") if n in store.arrays]
    for b in blocks:
        start, stop = store.block_rows(b)
        block = {n: store.arrays[n][start:stop] for n in names}
        logp = decode_values(block, m.values_scheme).astype(np.float64) / tau - block["lse"][:, t : t + 1].astype(np.float64)
        p = np.exp(logp)  # (n, k)
        if "sample_counts" in block:
            p[block["sample_counts"] == 0] = 0.0  # padding copies of a drawn id, not ids of their own
        yield p, np.clip(1.0 - p.sum(axis=1), 0.0, 1.0)


def _xlogx(p: np.ndarray) -> np.ndarray:
    return np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)


def size_on_disk(path) -> int:
    """Bytes of every file (object) under the store's folder or prefix (apparent sizes)."""
    from .store.location import as_location, is_remote

    loc = as_location(path)
    if is_remote(loc):
        return int(loc.fs.du(loc.path, total=True))
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(loc) for f in files)


def describe(path) -> dict:
    """path: a store folder or an fsspec URL."""
    store = open_store(path, allow_incomplete=True)
    m = store.manifest
    arrays = {}
    for name, a in store.arrays.items():
        per_row = int(np.prod(a.shape[1:], dtype=np.int64)) * np.dtype(a.dtype).itemsize
        arrays[name] = {"shape": list(a.shape), "dtype": str(a.dtype), "chunks": list(a.chunks), "bytes_per_row": per_row}
    # per row (= per token in a sequence store); the input tokens and features are not targets
    target_bytes = m.target_bytes_per_row()
    feature_bytes = sum(v["bytes_per_row"] for k, v in arrays.items() if k.startswith("features/"))
    full = 4 * m.num_classes  # full fp32 logits per row
    splits = dict(store.samples.stats) if store.samples is not None else {}
    stats = teacher_stats(store)
    store.close()
    return {
        "path": str(store.path),
        "manifest": m.model_dump(mode="json"),
        "arrays": arrays,
        "splits": splits,
        "target_bytes_per_row": target_bytes,
        "feature_bytes_per_row": feature_bytes,
        "bytes_per_row": sum(v["bytes_per_row"] for v in arrays.values()),  # everything a row holds, features included
        "store_bytes": size_on_disk(store.path),
        "teacher": stats,
        "full_fp32_bytes_per_row": full,
        "ratio_to_full_fp32": target_bytes / full,
    }


def render(info: dict) -> None:
    m = info["manifest"]
    c = make_console()
    state = "[green]complete[/green]" if m["complete"] else "[red]INCOMPLETE[/red]"
    c.print(f"[bold]{info['path']}[/bold]  {m['format']} v{m['version']}  {m['kind']}  {state}")
    c.print(
        f"rows {m['num_rows']:,}  classes {m['num_classes']}  top_k {m['top_k']}  temperatures {m['temperatures']}  "
        f"chunk_rows {m['chunk_rows']}  ids {m.get('indices_scheme', 'plain')}"
    )
    unit = "token" if m["kind"] == "sequence" else "row"
    c.print(
        f"targets {info['target_bytes_per_row']} B/{unit} (full fp32 logits {info['full_fp32_bytes_per_row']} B/{unit}, "
        f"ratio {info['ratio_to_full_fp32']:.4f})"
    )
    others = info["bytes_per_row"] - info["target_bytes_per_row"] - info["feature_bytes_per_row"]
    c.print(
        f"all arrays {info['bytes_per_row']} B/{unit} (targets {info['target_bytes_per_row']} + features "
        f"{info['feature_bytes_per_row']}" + (f" + input tokens {others}" if others else "") + f"); "
        f"on disk {_bytes(info['store_bytes'])} ({info['store_bytes']:,} B)"
    )
    if info["teacher"]:
        t = info["teacher"]
        c.print(
            f"teacher at tau={t['temperature']}, mean over {t['rows']:,} {unit}s: entropy {t['mean_entropy_nats']:.4f} nats "
            f"({t['entropy_is']}), confidence {t['mean_confidence']:.4f} ({t['confidence_is']})"
        )
    if m.get("reconstruction_kl"):
        r = m["reconstruction_kl"]
        c.print(f"{m.get('targets', 'topk')} targets, values {m.get('values_scheme', 'raw')}: reconstruction KL per token at tau={r['temperature']} "
                f"over {r['rows']:,} held-out rows: compression {r['compression']:.3g}, full {r['full']:.3g} nats")
    c.print(f"teacher {m['teacher']['factory']} {m['teacher']['kwargs']}  sha256 {m['teacher']['checkpoint_sha256'][:16]}…")
    if m["teacher"].get("outputs"):
        c.print(f"teacher head padded: {m['teacher']['outputs']} outputs, cut to the first {m['num_classes']}")
    for src in m.get("sources") or []:  # an ensemble store (`kd merge`): its teachers and weights
        t, sm = src["manifest"]["teacher"], src["manifest"]
        c.print(f"  weight {src['weight']:.4g}: {t['factory']} {t['kwargs']}  top_k {sm['top_k']}  sha256 {t['checkpoint_sha256'][:16]}…")
    c.print(f"dataset {m['dataset']['factory']} {m['dataset']['kwargs']}  {m['dataset']['fingerprint'][:23]}…")
    t = Table("array", "shape", "dtype", "chunks", "B/row")
    for name, a in info["arrays"].items():
        t.add_row(name, str(tuple(a["shape"])), a["dtype"], str(tuple(a["chunks"])), str(a["bytes_per_row"]))
    c.print(t)
    if info["splits"]:
        s = Table("split", "samples", "labelled")
        for name, v in info["splits"].items():
            s.add_row(name, f"{v['samples']:,}", f"{v['labelled']:,}")
        c.print(s)


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""
