"""Bytes per token vs reconstruction error of stored LM targets, on the LM track's teacher.

For k in {1, 8, 32, 128}: top-k vs sampled (m = k draws), float16 vs 8-bit (q8) values; mean per-token
KL(teacher || reconstruction) at tau = 1 over held-out validation tokens, two ways (compression: stored ids +
one tail bucket; full: tail spread over the ids not stored), for the teacher's logits as they are (x1) and
sharpened x2.5 (closer to a real LLM's entropy, as in the peer study quoted in docs/benchmarks.md). Bytes per token at
V = 8192 (int16 ids) and at V = 128,256 (int32 ids), ratio to full fp32 logits.
Run: OMP_NUM_THREADS=2 python -m bench.lm_targets [tokens]   (teacher: bench/lm_pipeline.yaml)

`--packed [tokens]`: packed ids (ceil(log2 V) bits each) at V = 8,192, 128,256, 151,936 and 262,144, top-k
q8 and fp16 values, k in PACKED_KS: bytes per token and the two KLs, beside a peer's published figures
(PEER). The teacher's vocabulary is 8192; at a larger V its ids are renamed by a fixed injection into [0, V)
(bench.lm_common.id_injection: the same distribution, the largest ids in use) and every row goes through
the store's path at that V (encode_targets -> to_host, which packs -> targets_from_arrays, which unpacks);
the decoded ids must map back exactly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from bench.lm_common import first_tokens, id_injection, lm_setup, scheme_manifest, teacher_logits
from kd_pipeline.lm.reconstruction import reconstruction_kl
from kd_pipeline.store.values import encode_targets, to_host
from kd_pipeline.targets import targets_from_arrays, teacher_rows, through_store

KS = (1, 8, 32, 128)
SCHEMES = [(t, d) for t in ("topk", "sampled") for d in ("float16", "uint8")]


def held_out_logits(n_tokens: int):
    """-> cfg, the teacher's full logits (n, V) float32 over the first ~n_tokens validation tokens."""
    cfg, teacher, (ids, starts, lengths) = lm_setup("val")
    s, n = first_tokens(starts, lengths, n_tokens)
    with torch.no_grad():
        return cfg, torch.cat(list(teacher_logits(teacher, ids, s, n, 16)))


def main(n_tokens: int = 20000) -> None:
    cfg, logits = held_out_logits(n_tokens)
    V = cfg.data.num_classes
    gen = torch.Generator().manual_seed(0)
    rows = []
    for scale in (1.0, 2.5):
        z = logits * scale
        p = torch.softmax(z, 1)
        ent = float(-(p * torch.log_softmax(z, 1)).sum(1).mean())
        top1 = float(p.max(1).values.mean())
        for k in KS:
            for targets, dtype in SCHEMES:
                m = scheme_manifest(V, k, dtype, targets)
                comp = full = 0.0
                for i in range(0, len(z), 2048):
                    zz = z[i : i + 2048]
                    t = through_store(zz, m, gen)  # teacher_rows -> encode_targets -> to_host -> decode
                    valid = t.counts > 0 if t.counts is not None else None
                    c, f = reconstruction_kl(zz, t.values, t.indices, t.lse[:, 0], 1.0, valid)
                    comp, full = comp + float(c.sum()), full + float(f.sum())
                b = m.target_bytes_per_row()
                b128 = scheme_manifest(128_256, k, dtype, targets).target_bytes_per_row()
                rows.append({"scale": scale, "entropy": ent, "mean_top_p": top1, "k": k, "targets": targets, "values": dtype,
                             "bytes_per_token": b, "bytes_per_token_v128k": b128, "ratio_to_fp32": b / (4 * V),
                             "compression_kl": comp / len(z), "full_kl": full / len(z)})
                r = rows[-1]
                print(f"x{scale} k={k:3d} {targets:7s} {dtype:7s} {b:4d} B/token ({b128:4d} at V=128k, {r['ratio_to_fp32']:.4f} of fp32)"
                      f"  compression KL {r['compression_kl']:.2e}  full KL {r['full_kl']:.3f}", flush=True)
    out = Path("bench/out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "lm_targets.json").write_text(json.dumps({"tokens": len(logits), "vocab": V, "rows": rows}, indent=1))
    print(f"{len(logits)} held-out tokens, vocab {V}; teacher entropy x1 {rows[0]['entropy']:.2f} nats, "
          f"x2.5 {rows[-1]['entropy']:.2f} nats")


VOCABS = (8192, 128_256, 151_936, 262_144)
PACKED_KS = (8, 32, 50, 64, 96, 128)
# A peer's figures, as published 2026-11-28 (teacher: 4-layer d=256 causal LM, byte-level BPE vocab 8192, stdlib
# sources, entropy 5.6 nats x1 / 1.3 nats x2.5): bytes/token at V = 8192 and 128,256 (bit-packed ids), and
# KL (x1, x2.5) in nats at tau = 1.
PEER = {
    "DistillKit recommended (k=128, 16 exact bf16 + polynomial fit)": {"k": 128, "bytes": {8192: 264, 128_256: 328}, "compression": (7.8e-2, 1.5e-2), "full": (0.345, 0.029)},
    "DistillKit budget (k=50)": {"k": 50, "bytes": {8192: 96, 128_256: 121}, "compression": (2.3e-2, 1.5e-1), "full": (0.472, 0.193)},
    "DistillKit quick-start (k=128, 32 exact fp32, delta)": {"k": 128, "bytes": {8192: 348, 128_256: 412}, "compression": (8.5e-5, 6.6e-5), "full": (0.267, 0.014)},
}


def peer_bytes(p: dict, V: int) -> tuple[float, bool]:
    """-> (bytes/token, published?). Not published at other V: derived as their 8192 figure + k*(b - 13)/8 for
    b-bit packed ids, which is exactly how their 128,256 figures follow from their 8192 ones (+ k * 4/8)."""
    if V in p["bytes"]:
        return p["bytes"][V], True
    return p["bytes"][8192] + p["k"] * ((V - 1).bit_length() - 13) / 8, False


def packed_rows(n_tokens: int = 20000) -> None:
    cfg, logits = held_out_logits(n_tokens)
    base = cfg.data.num_classes
    maps = {V: id_injection(V, logits.argmax(1).numpy(), base) for V in VOCABS}
    inverse = {V: np.full(V, -1, np.int64) for V in VOCABS}
    for V in VOCABS:
        inverse[V][maps[V]] = np.arange(base)
    rows, step, entropy = [], 2048, {}
    for scale in (1.0, 2.5):
        z = logits * scale
        entropy[scale] = float(sum(-(torch.softmax(c, 1) * torch.log_softmax(c, 1)).sum() for c in z.split(step)) / len(z))
        for k in PACKED_KS:
            m0 = scheme_manifest(base, k, "float16", "topk")
            targets = [teacher_rows(z[i : i + step], m0) for i in range(0, len(z), step)]  # top-k at the teacher's V
            for dtype in ("uint8", "float16"):
                for V in VOCABS:
                    m = scheme_manifest(V, k, dtype, "topk", ids="packed")
                    comp = full = 0.0
                    for i, t in zip(range(0, len(z), step), targets):
                        t = dict(t, ids=torch.from_numpy(maps[V])[t["ids"]])  # renamed into [0, V)
                        d = targets_from_arrays(to_host(encode_targets(t, m), m), m)
                        assert torch.equal(d.indices, t["ids"]), f"packed ids did not round-trip at V={V}"
                        back = torch.from_numpy(inverse[V])[d.indices]  # the teacher's own ids again
                        c, f = reconstruction_kl(z[i : i + step], d.values, back, d.lse[:, 0], 1.0)
                        comp, full = comp + float(c.sum()), full + float(f.sum())
                    b = m.target_bytes_per_row()
                    rows.append({"scale": scale, "k": k, "values": dtype, "vocab": V, "id_bits": (V - 1).bit_length(),
                                 "bytes_per_token": b, "bytes_plain_ids": scheme_manifest(V, k, dtype, "topk").target_bytes_per_row(),
                                 "compression_kl": comp / len(z), "full_kl": full / len(z)})
                    r = rows[-1]
                    print(f"x{scale} k={k:3d} {dtype:7s} V={V:7d} {b:4d} B/token (plain ids {r['bytes_plain_ids']:4d})  "
                          f"compression KL {r['compression_kl']:.2e}  full KL {r['full_kl']:.3f}", flush=True)
    compare = _against_peer(rows)
    out = Path("bench/out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "lm_ids_targets.json").write_text(json.dumps({"tokens": len(logits), "teacher_vocab": base, "entropy": entropy, "rows": rows, "peer": compare}, indent=1))
    print(f"{len(logits)} held-out tokens, teacher vocab {base}, entropy x1 {entropy[1.0]:.2f} nats, x2.5 {entropy[2.5]:.2f} nats")


def _against_peer(rows: list[dict]) -> list[dict]:
    """Per peer scheme and V: our scheme at the same k, and our largest k with fewer bytes and lower
    compression KL at both scales."""
    ours = {}
    for r in rows:
        ours.setdefault((r["k"], r["values"], r["vocab"]), {})[r["scale"]] = r
    out = []
    for name, p in PEER.items():
        for V in VOCABS:
            pb, published = peer_bytes(p, V)
            def wins(x):
                return x[1.0]["bytes_per_token"] < pb and all(x[s]["compression_kl"] < c for s, c in zip((1.0, 2.5), p["compression"]))
            same_k = ours[(p["k"], "uint8", V)]
            best = max((x for (k, d, v), x in ours.items() if v == V and wins(x)), key=lambda x: (x[1.0]["k"], -x[1.0]["bytes_per_token"]), default=None)
            e = {"peer": name, "vocab": V, "peer_bytes": pb, "peer_bytes_published": published,
                 "same_k_q8": {"bytes": same_k[1.0]["bytes_per_token"], "wins": wins(same_k)},
                 "best": None if best is None else {"k": best[1.0]["k"], "values": best[1.0]["values"], "bytes": best[1.0]["bytes_per_token"],
                                                    "compression_kl": [best[s]["compression_kl"] for s in (1.0, 2.5)],
                                                    "full_kl": [best[s]["full_kl"] for s in (1.0, 2.5)]}}
            out.append(e)
            b = e["best"]
            print(f"{name} at V={V}: {pb:g} B{'' if published else ' (derived)'}; ours at k={p['k']} q8 {e['same_k_q8']['bytes']} B "
                  f"({'fewer bytes and lower KL' if e['same_k_q8']['wins'] else 'not both'}); largest k with both: "
                  + ("none" if b is None else f"k={b['k']} {b['values']} {b['bytes']} B, compression KL {b['compression_kl'][0]:.1e} / {b['compression_kl'][1]:.1e}, full KL {b['full_kl'][0]:.3f} / {b['full_kl'][1]:.3f}"))
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["--packed"]:
        packed_rows(*(int(a) for a in sys.argv[2:]))
    else:
        main(*(int(a) for a in sys.argv[1:]))
