"""LM speed ratios, each measured side by side in one run (alternating, median of `REPS`):
1. teacher pass tokens/s (teacher + top-k + encode + store writes) / bare teacher forward tokens/s;
2. KD student stage tokens/s (from the store) / hard-label training tokens/s (tokens in memory), same student;
3. streaming tokens/s from the store (SampleStream over zarr) / the same stream over np.memmap of the same arrays.
Run: OMP_NUM_THREADS=2 python -m bench.lm_speed [tokens] [student_steps]   (teacher: bench/lm_pipeline.yaml)

`--ids [tokens] [rounds] [student_steps]`: packed vs plain ids. At V = 8,192, 128,256 and 262,144, two stores with the same
targets (the teacher's top-32, q8 values; at V > 8192 its ids renamed into [0, V) by bench.lm_common.id_injection),
one with plain and one with packed ids: SampleStream tokens/s over the packed store / over the plain one, and
packed stream / the same stream over np.memmap (ratio 3's goal, >= 0.5), alternated, order flipped each round,
median of the per-round ratios; per 16,384-row block: read_block, unpack_ids, check_block (ms, median); and at
V = 8192, the KD student trained from the packed store / from the plain one (ratio 2's path).
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

from bench.lm_common import first_tokens, id_injection, lm_setup, scheme_manifest
from kd_pipeline.config import TrainConfig
from kd_pipeline.lm.batches import lm_ce_step, pad_samples, sample_batches
from kd_pipeline.lm.cachepass import encode_rows, row_targets, sequence_pass, teacher_rows
from kd_pipeline.lm.manifest import sequence_samples_table
from kd_pipeline.lm.stream import SampleStream, lm_kd_step
from kd_pipeline.models import build_model
from kd_pipeline.store import CacheWriter, open_store
from kd_pipeline.store.format import id_bits
from kd_pipeline.store.ids import pack_ids, unpack_ids
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


def write_rows(path: Path, m, arrays: dict[str, np.ndarray], lengths: np.ndarray):
    """A finished store from whole arrays (n rows), one write per block."""
    w = CacheWriter.open(path, m)
    for b in w.pending_blocks():
        s, e = w.block_rows(b)
        w.write_block(b, {k: v[s:e] for k, v in arrays.items()})
    w.finalize(sequence_samples_table("train", lengths))
    return open_store(path)


def median_ratio(a, b, rounds: int) -> float:
    """Median over rounds of time(b) / time(a) (= speed of a / speed of b), order flipped each round."""
    r = []
    for i in range(rounds):
        if i % 2 == 0:
            ta = timed(a)
            tb = timed(b)
        else:
            tb = timed(b)
            ta = timed(a)
        r.append(tb / ta)
    return statistics.median(r)


def ids_stream(n_tokens: int = 32768, rounds: int = 5, student_steps: int = 20, k: int = 32) -> None:
    cfg, teacher, (ids, starts, lengths) = lm_setup("train")
    base = cfg.data.num_classes
    s, n = first_tokens(starts, lengths, n_tokens)
    m0 = scheme_manifest(base, k, "uint8", "topk")
    with torch.no_grad():  # the teacher's top-k only: its full logits of 32k tokens would be 1 GB
        parts = [row_targets(z, m0) for z in teacher_rows(teacher, ids, s, n, 16, torch.device("cpu"))]
    t0 = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    toks = np.concatenate([ids[a : a + c] for a, c in zip(s.tolist(), n.tolist())]).astype(np.int32)
    B, batches, tmp = cfg.student_train.batch_size, 200, Path(tempfile.mkdtemp(prefix="kd-lm-ids-"))

    def stream(st):
        it = iter(SampleStream(st, B, 4, 0))
        return sum(int(next(it)["mask"].sum()) for _ in range(batches))

    res = {"tokens": int(n.sum()), "k": k, "rounds": rounds, "vocabs": {}}
    for V in (8192, 128_256, 262_144):
        t = dict(t0, ids=torch.from_numpy(id_injection(V, t0["ids"][:, 0].numpy(), base))[t0["ids"]])
        stores = {}
        for scheme in ("plain", "packed"):
            m = scheme_manifest(V, k, "uint8", "topk", len(toks), cfg.cache.chunk_rows, num_samples=len(n), ids=scheme)
            stores[scheme] = write_rows(tmp / f"{V}-{scheme}", m, {**encode_rows(t, m), "tokens": toks}, n)
        plain, packed = stores["plain"], stores["packed"]
        mem = MemmapStore(packed, Path(tempfile.mkdtemp(dir=tmp)))
        r = {"packed/plain": median_ratio(lambda: stream(packed), lambda: stream(plain), rounds),
             "packed stream/memmap": median_ratio(lambda: stream(packed), lambda: stream(mem), rounds)}
        r["tokens_per_s_packed"] = stream(packed) / timed(lambda: stream(packed))
        blk = packed.read_block(0)
        bits, ms = id_bits(V), lambda f: 1e3 * statistics.median(timed(f) for _ in range(9))
        r["block_rows"] = len(blk["tokens"])
        r["read_block_ms"] = ms(lambda: packed.read_block(0))
        r["unpack_ms"] = ms(lambda: unpack_ids(blk["topk_indices"], k, bits))
        r["check_block_ms"] = ms(lambda: packed.check_block(0, blk))
        plain_ids = plain.read_block(0)["topk_indices"]
        r["pack_ms"] = ms(lambda: pack_ids(plain_ids, bits))
        r["bytes_per_token"] = {sch: int(st.arrays["topk_indices"].nbytes // len(toks)) for sch, st in stores.items()}
        if V == base:  # what the stream feeds: the KD student (its output is the teacher's vocabulary)
            tc = TrainConfig(steps=student_steps, batch_size=B, lr=1e-3, log_every=student_steps)

            def kd(st):
                torch.manual_seed(0)
                student = build_model(cfg.student, V).train()
                fit(student.parameters(), iter(SampleStream(st, B, 4, 0)), lm_kd_step(student, 0.5, 1.0), tc, "kd")

            r["student packed/plain"] = median_ratio(lambda: kd(packed), lambda: kd(plain), rounds)
            print(f"V={V}: KD student from the packed store / from the plain one, {student_steps} steps: {r['student packed/plain']:.3f}", flush=True)
        res["vocabs"][V] = r
        print(f"V={V}: stream packed / plain ids {r['packed/plain']:.3f}, packed stream / memmap {r['packed stream/memmap']:.3f} "
              f"({r['tokens_per_s_packed']:.0f} tok/s); per {r['block_rows']}-row block: read_block {r['read_block_ms']:.2f} ms, "
              f"unpack {r['unpack_ms']:.2f} ms, check_block {r['check_block_ms']:.2f} ms, pack {r['pack_ms']:.2f} ms; "
              f"ids {r['bytes_per_token']['packed']} vs {r['bytes_per_token']['plain']} B/token", flush=True)
        for st in stores.values():
            st.close()
    Path("bench/out").mkdir(parents=True, exist_ok=True)
    Path("bench/out/lm_ids_speed.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--ids"]:
        ids_stream(*(int(a) for a in sys.argv[2:]))
    else:
        main(*(int(a) for a in sys.argv[1:]))
