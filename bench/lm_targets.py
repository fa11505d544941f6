"""Bytes per token vs reconstruction error of stored LM targets, on the LM track's teacher.

For k in {1, 8, 32, 128}: top-k vs sampled (m = k draws), float16 vs 8-bit (q8) values; mean per-token
KL(teacher || reconstruction) at tau = 1 over held-out validation tokens, two ways (compression: stored ids +
one tail bucket; full: tail spread over the ids not stored), for the teacher's logits as they are (x1) and
sharpened x2.5 (closer to a real LLM's entropy, as in the peer study quoted in docs/benchmarks.md). Bytes per token at
V = 8192 (int16 ids) and at V = 128,256 (int32 ids), ratio to full fp32 logits.
Run: OMP_NUM_THREADS=2 python -m bench.lm_targets [tokens]   (teacher: bench/lm_pipeline.yaml)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from bench.lm_common import first_tokens, lm_setup, scheme_manifest
from kd_pipeline.lm.cachepass import encode_rows, row_targets, rows_from_arrays, teacher_rows
from kd_pipeline.lm.manifest import target_bytes_per_token
from kd_pipeline.lm.reconstruction import reconstruction_kl

KS = (1, 8, 32, 128)
SCHEMES = [(t, d) for t in ("topk", "sampled") for d in ("float16", "uint8")]


def main(n_tokens: int = 20000) -> None:
    cfg, teacher, (ids, starts, lengths) = lm_setup("val")
    V = cfg.data.num_classes
    s, n = first_tokens(starts, lengths, n_tokens)
    with torch.no_grad():
        logits = torch.cat(list(teacher_rows(teacher, ids, s, n, 16, torch.device("cpu"))))
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
                    t = rows_from_arrays(encode_rows(row_targets(zz, m, gen), m), m)
                    valid = t["counts"] > 0 if "counts" in t else None
                    c, f = reconstruction_kl(zz, t["values"], t["ids"], t["lse"][:, 0], 1.0, valid)
                    comp, full = comp + float(c.sum()), full + float(f.sum())
                b = target_bytes_per_token(m)
                b128 = target_bytes_per_token(scheme_manifest(128_256, k, dtype, targets))
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


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
