"""`kd inspect`: what a store holds, read through the validating reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from .store import open_store


def describe(path: Path) -> dict:
    store = open_store(path, allow_incomplete=True)
    m = store.manifest
    arrays = {}
    for name, a in store.arrays.items():
        per_row = int(np.prod(a.shape[1:], dtype=np.int64)) * np.dtype(a.dtype).itemsize
        arrays[name] = {"shape": list(a.shape), "dtype": str(a.dtype), "chunks": list(a.chunks), "bytes_per_row": per_row}
    # per row (= per token in a sequence store); the input tokens and features are not targets
    target_bytes = m.target_bytes_per_row()
    full = 4 * m.num_classes  # full fp32 logits per row
    splits = dict(store.samples.stats) if store.samples is not None else {}
    store.close()
    return {
        "path": str(path),
        "manifest": m.model_dump(mode="json"),
        "arrays": arrays,
        "splits": splits,
        "target_bytes_per_row": target_bytes,
        "full_fp32_bytes_per_row": full,
        "ratio_to_full_fp32": target_bytes / full,
    }


def render(info: dict) -> None:
    m = info["manifest"]
    c = Console()
    state = "[green]complete[/green]" if m["complete"] else "[red]INCOMPLETE[/red]"
    c.print(f"[bold]{info['path']}[/bold]  {m['format']} v{m['version']}  {m['kind']}  {state}")
    c.print(
        f"rows {m['num_rows']:,}  classes {m['num_classes']}  top_k {m['top_k']}  temperatures {m['temperatures']}  "
        f"chunk_rows {m['chunk_rows']}"
    )
    unit = "token" if m["kind"] == "sequence" else "row"
    c.print(
        f"targets {info['target_bytes_per_row']} B/{unit} (full fp32 logits {info['full_fp32_bytes_per_row']} B/{unit}, "
        f"ratio {info['ratio_to_full_fp32']:.4f})"
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
