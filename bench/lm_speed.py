"""LM speed ratios, each measured side by side in one run (alternating, median of `REPS`):
1. teacher pass tokens/s (teacher + top-k + encode + store writes) / bare teacher forward tokens/s;
2. KD student stage tokens/s (from the store) / hard-label training tokens/s (tokens in memory), same student;
3. streaming tokens/s from the store (SampleStream over zarr) / the same stream over np.memmap of the same arrays.
Run: OMP_NUM_THREADS=2 python -m bench.lm_speed [tokens] [student_steps]   (teacher: bench/lm_pipeline.yaml)
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.lm_common import first_tokens, lm_setup, scheme_manifest
from kd_pipeline.config import TrainConfig
from kd_pipeline.lm.batches import lm_ce_step, pad_samples, sample_batches
from kd_pipeline.lm.cachepass import sequence_pass
from kd_pipeline.lm.manifest import sequence_samples_table
from kd_pipeline.lm.stream import SampleStream, lm_kd_step
from kd_pipeline.models import build_model
from kd_pipeline.store import CacheWriter, open_store
from kd_pipeline.training import fit

REPS = 3


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class MemmapStore:
    """The store's arrays as .npy memmaps behind CacheStore's read interface (the baseline of ratio 3)."""

    def __init__(self, store, folder: Path):
        self.manifest, self.samples, self.num_blocks = store.manifest, store.samples, store.num_blocks
        self.block_rows, self.check_block = store.block_rows, store.check_block
        self.arrays = {}
        for name, a in store.arrays.items():
            np.save(folder / f"{name}.npy", a[:])
            self.arrays[name] = np.load(folder / f"{name}.npy", mmap_mode="r")

    def read_block(self, b):
        s, e = self.block_rows(b)
        return {k: np.array(v[s:e]) for k, v in self.arrays.items()}


def main(n_tokens: int = 32768, student_steps: int = 20) -> None:
    cfg, teacher, (ids, starts, lengths) = lm_setup("train")
    V, cpu = cfg.data.num_classes, torch.device("cpu")
    s, n = first_tokens(starts, lengths, n_tokens)
    bs = cfg.cache.batch_size // cfg.sequence.context
    tmp = Path(tempfile.mkdtemp(prefix="kd-lm-speed-"))
    m = scheme_manifest(V, cfg.cache.top_k, "float16", "topk", int(n.sum()), cfg.cache.chunk_rows, num_samples=len(n))

    @torch.no_grad()
    def bare():
        for i in range(0, len(s), bs):
            teacher(pad_samples(ids, s[i : i + bs], n[i : i + bs])["x"])

    def cache(rep: int):
        w = CacheWriter.open(tmp / f"store{rep}", m)  # a fresh store each time
        sequence_pass(teacher, w, ids, s, n, bs, cpu, torch.float32, 0)
        w.finalize(sequence_samples_table("train", n))

    t_bare, t_pass = [], []
    for rep in range(REPS):
        t_bare.append(timed(bare))
        t_pass.append(timed(lambda: cache(rep)))
    tok = float(n.sum())
    res = {"tokens": tok, "bare_forward_tokens_per_s": tok / statistics.median(t_bare),
           "teacher_pass_tokens_per_s": tok / statistics.median(t_pass)}
    res["teacher_pass_ratio"] = statistics.median(t_bare) / statistics.median(t_pass)
    print(f"1. teacher pass {res['teacher_pass_tokens_per_s']:.0f} tok/s / bare forward {res['bare_forward_tokens_per_s']:.0f} tok/s "
          f"= {res['teacher_pass_ratio']:.3f}", flush=True)

    store = open_store(tmp / "store0")
    B = cfg.student_train.batch_size
    tc = TrainConfig(steps=student_steps, batch_size=B, lr=1e-3, log_every=student_steps)

    def kd():
        student = build_model(cfg.student, V).train()
        fit(student.parameters(), iter(SampleStream(store, B, 4, 0)), lm_kd_step(student, 0.5, 1.0), tc, "kd")

    def hard():
        student = build_model(cfg.student, V).train()
        fit(student.parameters(), sample_batches(ids, s, n, B, 0), lm_ce_step(student), tc, "ce")

    t_kd, t_ce = [], []
    for _ in range(REPS):
        t_kd.append(timed(kd))
        t_ce.append(timed(hard))
    res["student_ratio"] = statistics.median(t_ce) / statistics.median(t_kd)
    print(f"2. KD student from the store / hard-label training, {student_steps} steps of {B} samples: {res['student_ratio']:.3f}", flush=True)

    mem = MemmapStore(store, tmp)
    batches = 200

    def stream(st):
        it = iter(SampleStream(st, B, 4, 0))
        return sum(int(next(it)["mask"].sum()) for _ in range(batches))

    t_z, t_m = [], []
    for _ in range(REPS):
        t_z.append(timed(lambda: stream(store)))
        t_m.append(timed(lambda: stream(mem)))
    toks = stream(store)
    res["stream_zarr_tokens_per_s"] = toks / statistics.median(t_z)
    res["stream_memmap_tokens_per_s"] = toks / statistics.median(t_m)
    res["stream_ratio"] = statistics.median(t_m) / statistics.median(t_z)
    print(f"3. streaming from the store {res['stream_zarr_tokens_per_s']:.0f} tok/s / memmap {res['stream_memmap_tokens_per_s']:.0f} tok/s "
          f"= {res['stream_ratio']:.3f}", flush=True)
    Path("bench/out").mkdir(parents=True, exist_ok=True)
    Path("bench/out/lm_speed.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
