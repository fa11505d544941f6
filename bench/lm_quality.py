"""Student quality after the same token budget: hard labels vs cached top-k (k = 8, 32) vs cached sampled
(m = 32) vs online full-logit KD (live teacher), >= 2 seeds; validation cross-entropy and perplexity.

All students see the same first `train_tokens` tokens of the train split, `steps` x `batch` samples each,
alpha = 0.5, tau = 1. The three stores come from one teacher pass (logits computed once per block).
Run: OMP_NUM_THREADS=2 python -m bench.lm_quality [train_tokens] [steps] [seeds]   (teacher: bench/lm_pipeline.yaml)
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.common import OnlineKD
from bench.lm_common import first_tokens, lm_ce, lm_setup, scheme_manifest, teacher_logits, window_layout, window_samples
from kd_pipeline.config import DistillConfig, TrainConfig
from kd_pipeline.lm.tokenizer import load_split, windows
from kd_pipeline.models import build_model
from kd_pipeline.objectives import CachedKD, HardLabels
from kd_pipeline.prepare import data_dir
from kd_pipeline.store import CacheWriter, open_store
from kd_pipeline.store.values import encode_targets, to_host
from kd_pipeline.store.samples_parts import span_table
from kd_pipeline.stream import shuffled_batches, student_batches
from kd_pipeline.targets import teacher_rows
from kd_pipeline.training import fit, seed_everything

STORES = {"topk8": (8, "topk"), "topk32": (32, "topk"), "sampled32": (32, "sampled")}


def write_stores(cfg, teacher, ids, s, n, folder: Path) -> dict:
    """One teacher pass, three stores."""
    V = cfg.data.num_classes
    R = int(n.sum())
    writers = {name: CacheWriter.open(folder / name, scheme_manifest(V, k, "float16", t, R, R, num_samples=len(n))) for name, (k, t) in STORES.items()}
    gen = torch.Generator().manual_seed(0)
    parts = {name: [] for name in STORES}
    for z in teacher_logits(teacher, ids, s, n, 16):
        for name, w in writers.items():
            parts[name].append(to_host(encode_targets(teacher_rows(z, w.manifest, gen), w.manifest), w.manifest))
    toks = np.concatenate([ids[a : a + k] for a, k in zip(s.tolist(), n.tolist())]).astype("int32")
    for name, w in writers.items():
        arrays = {k: np.concatenate([p[k] for p in parts[name]]) for k in parts[name][0]}
        w.write_block(0, {**arrays, "tokens": toks})
        w.finalize(span_table(["train"], window_layout(n).rows_of(0, len(n)), None))
    return {name: open_store(folder / name) for name in STORES}


def main(train_tokens: int = 65536, steps: int = 60, seeds: int = 2) -> None:
    cfg, teacher, (ids, starts, lengths) = lm_setup("train")
    V, B = cfg.data.num_classes, cfg.student_train.batch_size
    s, n = first_tokens(starts, lengths, train_tokens)
    stores = write_stores(cfg, teacher, ids, s, n, Path(tempfile.mkdtemp(prefix="kd-lm-quality-")))
    vids, voff = load_split(data_dir(cfg) / "tokens", cfg.data.val_split, V)
    val = window_samples(vids, *first_tokens(*windows(voff, cfg.sequence.context), cfg.sequence.eval_tokens), V)
    train = window_samples(ids, s, n, V)
    tc = TrainConfig(steps=steps, batch_size=B, lr=cfg.student_train.lr, log_every=steps)
    results: dict[str, list[float]] = {}
    teacher_ce = lm_ce(teacher, val)
    print(f"teacher val CE {teacher_ce:.3f} (ppl {math.exp(teacher_ce):.1f}); budget {steps} x {B} samples of <= "
          f"{cfg.sequence.context} tokens from {int(n.sum())} train tokens", flush=True)
    for seed in range(seeds):
        for variant in ("hard", *STORES, "online"):
            seed_everything(seed)
            student = build_model(cfg.student, V).train()
            if variant == "hard":
                batches, module = shuffled_batches(train, 0, B, seed), HardLabels(student, train.kind)
            elif variant == "online":
                batches, module = shuffled_batches(train, 0, B, seed), OnlineKD(student, teacher, train.kind, 0.5, 1.0)
            else:
                batches = student_batches(stores[variant], None, B, 4, seed)
                module = CachedKD(student, train.kind, DistillConfig(alpha=0.5, temperature=1.0), {})
            fit(module, lambda skip: batches, tc, variant)
            ce = lm_ce(student, val)
            results.setdefault(variant, []).append(ce)
            print(f"seed {seed} {variant:10s} val CE {ce:.4f} ppl {math.exp(ce):.2f}", flush=True)
    summary = {v: {"val_ce": ces, "mean_ce": statistics.mean(ces), "mean_ppl": math.exp(statistics.mean(ces))} for v, ces in results.items()}
    for v, r in summary.items():
        print(f"{v:10s} val ppl {r['mean_ppl']:.2f}  (CE per seed {', '.join(f'{c:.4f}' for c in r['val_ce'])})")
    Path("bench/out").mkdir(parents=True, exist_ok=True)
    Path("bench/out/lm_quality.json").write_text(json.dumps({"teacher_val_ce": teacher_ce, "steps": steps, "batch": B,
                                                             "train_tokens": int(n.sum()), "results": summary}, indent=1))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
