"""LM metrics on held-out tokens: cross-entropy (nats/token), perplexity, top-1 next-token agreement with
the teacher, parameters, checkpoint bytes, forward tokens/s."""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .batches import pad_samples


def state_sha256(model: nn.Module) -> str:
    """Identity of a model's weights (for a teacher that was loaded, not trained into a checkpoint)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def limit_tokens(starts: np.ndarray, lengths: np.ndarray, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """The first samples holding at most max_tokens tokens (at least one sample)."""
    n = max(1, int(np.searchsorted(np.cumsum(lengths), max_tokens, side="right")))
    return starts[:n], lengths[:n]


@torch.no_grad()
def lm_scores(model: nn.Module, ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray, batch_size: int) -> dict:
    """-> ce (nats/token over labelled positions), top1 (L,) argmax per labelled position, tokens_per_s."""
    model.eval()
    ce_sum, n, top1, secs = 0.0, 0, [], 0.0
    for i in range(0, len(starts), batch_size):
        b = pad_samples(ids, starts[i : i + batch_size], lengths[i : i + batch_size])
        t0 = time.perf_counter()
        logits = model(b["x"])
        secs += time.perf_counter() - t0
        lab = b["y"] >= 0
        z, y = logits[lab].float(), b["y"][lab]
        ce_sum += float(F.cross_entropy(z, y, reduction="sum"))
        n += len(y)
        top1.append(z.argmax(1))
    return {"ce": ce_sum / n, "top1": torch.cat(top1), "tokens_per_s": float(lengths.sum()) / secs, "tokens": n}


def lm_metrics(models: dict[str, tuple[nn.Module, Path | None]], splits: dict[str, tuple], batch_size: int) -> dict:
    """models: name -> (model, checkpoint); the first is the teacher. splits: name -> (ids, starts, lengths)."""
    out: dict = {name: {} for name in models}
    for split, (ids, starts, lengths) in splits.items():
        scores = {name: lm_scores(m, ids, starts, lengths, batch_size) for name, (m, _) in models.items()}
        ref = scores[next(iter(models))]["top1"]
        for name, s in scores.items():
            out[name][split] = {
                "cross_entropy": s["ce"],
                "perplexity": math.exp(s["ce"]),
                "top1_agreement_with_teacher": float((s["top1"] == ref).float().mean()),
                "tokens": s["tokens"],
                "tokens_per_s": s["tokens_per_s"],
            }
    for name, (m, ckpt) in models.items():
        out[name]["parameters"] = int(sum(p.numel() for p in m.parameters()))
        out[name]["bytes_on_disk"] = ckpt.stat().st_size if ckpt is not None and ckpt.is_file() else None
    return out


def write_lm_report(path: Path, metrics: dict) -> None:
    lines = ["# LM track: teacher vs KD student vs hard-label student", "",
             "| model | split | cross-entropy (nats/token) | perplexity | top-1 agreement with teacher | params | bytes | tokens/s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in metrics.items():
        if not isinstance(r, dict) or "parameters" not in r:
            continue
        for split, s in r.items():
            if isinstance(s, dict):
                lines.append(f"| {name} | {split} | {s['cross_entropy']:.3f} | {s['perplexity']:.1f} | "
                             f"{s['top1_agreement_with_teacher']:.3f} | {r['parameters']:,} | {r['bytes_on_disk'] or '-'} | {s['tokens_per_s']:,.0f} |")
    if "store" in metrics:
        lines += ["", f"store: {metrics['store']}"]
    path.write_text("\n".join(lines) + "\n")
