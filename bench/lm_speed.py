"""LM speed ratios, each measured side by side in one run (alternating, median of `REPS`):
1. teacher pass tokens/s (`cachepass.teacher_pass`: samples through the DataLoader, teacher, top-k + lse,
   encode, packed ids, store writes, then `finalize`) / bare teacher forward tokens/s over the same samples;
2. KD student tokens/s (`student_batches` from the store -> `CachedKD`) / hard-label training tokens/s
   (`shuffled_batches` over the token windows -> `HardLabels`), same student, both in `training.fit`;
3. streaming tokens/s from the store (`student_batches` over zarr) / the same stream over np.memmap of the
   same arrays.
Run: OMP_NUM_THREADS=2 python -m bench.lm_speed [tokens] [student_steps]   (teacher: bench/lm_pipeline.yaml)

`--ids [tokens] [rounds] [student_steps]`: packed vs plain ids. At V = 8,192, 128,256 and 262,144, two stores with the same
targets (the teacher's top-32, q8 values; at V > 8192 its ids renamed into [0, V) by bench.lm_common.id_injection),
one with plain and one with packed ids: student_batches tokens/s over the packed store / over the plain one, and
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

from bench.lm_common import first_tokens, id_injection, lm_setup, scheme_manifest, teacher_logits, window_layout, window_samples, write_store
from kd_pipeline.cachepass import teacher_pass
from kd_pipeline.config import DistillConfig, TrainConfig
from kd_pipeline.kinds import Sequence
from kd_pipeline.models import build_model
from kd_pipeline.objectives import CachedKD, HardLabels
from kd_pipeline.prepare import samples_per_batch
from kd_pipeline.store import CacheWriter, open_store
from kd_pipeline.store.format import id_bits
from kd_pipeline.store.ids import pack_ids, unpack_ids
from kd_pipeline.store.values import encode_targets, to_host
from kd_pipeline.stream import shuffled_batches, student_batches
from kd_pipeline.targets import teacher_rows
from kd_pipeline.training import fit

REPS = 3


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class MemmapStore:
    """The store's arrays as .npy memmaps behind CacheStore's read interface (what `student_batches` calls:
    the baseline of ratio 3)."""

    def __init__(self, store, folder: Path):
        self.manifest, self.samples, self.num_blocks = store.manifest, store.samples, store.num_blocks
        self.block_rows, self.check_block, self.path = store.block_rows, store.check_block, store.path
        self.arrays = {}
        for name, a in store.arrays.items():
            np.save(folder / f"{name}.npy", a[:])
            self.arrays[name] = np.load(folder / f"{name}.npy", mmap_mode="r")

    def read_block(self, b):
        s, e = self.block_rows(b)
        return {k: np.array(v[s:e]) for k, v in self.arrays.items()}

    def read_blocks(self, blocks, names=None):
        """CacheStore.read_blocks (what the stream calls since issue 11)."""
        return {b: {k: v for k, v in self.read_block(b).items() if names is None or k in names} for b in blocks}


def kd_module(student, V: int) -> CachedKD:
    """The student stage's loss module at alpha = 0.5, tau = 1."""
    return CachedKD(student, Sequence(V), DistillConfig(alpha=0.5, temperature=1.0), {})


def main(n_tokens: int = 32768, student_steps: int = 20) -> None:
    cfg, teacher, (ids, starts, lengths) = lm_setup("train")
    V, cpu = cfg.data.num_classes, torch.device("cpu")
    s, n = first_tokens(starts, lengths, n_tokens)
    bs = samples_per_batch(cfg, cfg.cache.batch_size)
    tmp = Path(tempfile.mkdtemp(prefix="kd-lm-speed-"))
    # as the cache_teacher stage writes it: top-k fp16 values, packed ids (cache.ids: auto for sequence stores)
    m = scheme_manifest(V, cfg.cache.top_k, "float16", "topk", int(n.sum()), cfg.cache.chunk_rows, num_samples=len(n), ids="packed")
    train = window_samples(ids, s, n, V)
    layout = window_layout(n)
    keys = [np.arange(a, min(a + bs, len(s)), dtype=np.int64) for a in range(0, len(s), bs)]
    batches = [train.__getitems__((np.zeros(len(i), np.int64), i)) for i in keys]  # every sample once, in order

    @torch.inference_mode()
    def bare():
        for b in batches:
            teacher(b["x"])

    def cache(rep: int):
        w = CacheWriter.open(tmp / f"store{rep}", m)  # a fresh store each time
        teacher_pass(teacher, w, layout, train, train.kind, {}, bs, cpu, torch.float32)
        w.finalize()

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
        fit(kd_module(student, V), lambda skip: student_batches(store, None, B, 4, 0), tc, "kd")

    def hard():
        student = build_model(cfg.student, V).train()
        fit(HardLabels(student, train.kind), lambda skip: shuffled_batches(train, 0, B, 0), tc, "ce")

    t_kd, t_ce = [], []
    for _ in range(REPS):
        t_kd.append(timed(kd))
        t_ce.append(timed(hard))
    res["student_ratio"] = statistics.median(t_ce) / statistics.median(t_kd)
    print(f"2. KD student from the store / hard-label training, {student_steps} steps of {B} samples: {res['student_ratio']:.3f}", flush=True)

    mem = MemmapStore(store, tmp)
    n_batches = 200

    def stream(st):
        it = student_batches(st, None, B, 4, 0)
        return sum(int(next(it)["mask"].sum()) for _ in range(n_batches))

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
        parts = [teacher_rows(z, m0) for z in teacher_logits(teacher, ids, s, n, 16)]
    t0 = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    toks = np.concatenate([ids[a : a + c] for a, c in zip(s.tolist(), n.tolist())]).astype(np.int32)
    B, batches, tmp = cfg.student_train.batch_size, 200, Path(tempfile.mkdtemp(prefix="kd-lm-ids-"))

    def stream(st):
        it = student_batches(st, None, B, 4, 0)
        return sum(int(next(it)["mask"].sum()) for _ in range(batches))

    res = {"tokens": int(n.sum()), "k": k, "rounds": rounds, "vocabs": {}}
    for V in (8192, 128_256, 262_144):
        t = dict(t0, ids=torch.from_numpy(id_injection(V, t0["ids"][:, 0].numpy(), base))[t0["ids"]])
        stores = {}
        for scheme in ("plain", "packed"):
            m = scheme_manifest(V, k, "uint8", "topk", len(toks), cfg.cache.chunk_rows, num_samples=len(n), ids=scheme)
            stores[scheme] = write_store(tmp / f"{V}-{scheme}", m, {**to_host(encode_targets(t, m), m), "tokens": toks}, n)
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
                fit(kd_module(student, V), lambda skip: student_batches(st, None, B, 4, 0), tc, "kd")

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
