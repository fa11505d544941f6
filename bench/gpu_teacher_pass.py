"""The teacher pass on a CUDA GPU (issue 11, GPU path): rows/s of the whole pass (DataLoader -> pinned copy ->
teacher in cache.teacher_dtype under inference_mode -> top-k and logsumexp on the device -> non-blocking copy to
pinned host buffers -> writer thread) against a bare forward of the same teacher over the same inputs already
on the GPU, per teacher dtype; and the GPU store against the CPU store of the same teacher (float32).

    python -m bench.gpu_teacher_pass [--out DIR] [--channels 512] [--samples 200000]

Needs a GPU; prints a table and writes gpu_teacher_pass.json into --out. Not part of `make bench` (CI has no GPU).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml


def config(out: Path, cache: Path, device: str, dtype: str, channels: int, samples: int) -> dict:
    return {
        "out": str(out), "seed": 0,
        "data": {"factory": "kd_pipeline.data.mnist1d:mnist1d", "kwargs": {"num_samples": samples, "labelled": 4000, "seed": 42},
                 "num_classes": 10, "transfer_splits": ["transfer"], "num_workers": 4},
        "teacher": {"factory": "kd_pipeline.models:conv1d_net", "kwargs": {"channels": channels}},
        "student": {"factory": "kd_pipeline.models:mlp", "kwargs": {"in_features": 40, "hidden": [100, 100]}},
        "teacher_train": {"steps": 200, "batch_size": 256, "lr": 1e-3, "device": device},
        "student_train": {"steps": 10, "batch_size": 100, "lr": 1e-3},
        "cache": {"path": str(cache), "top_k": 3, "temperatures": [1.0, 4.0], "chunk_rows": 16384, "batch_size": 4096,
                  "device": device, "teacher_dtype": dtype, "features": {"penultimate": "body"}},
    }


def load(cfg: dict):
    from kd_pipeline.config import load_config

    p = Path(cfg["out"]).parent / f"{Path(cfg['cache']['path']).name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return load_config(p)


@torch.inference_mode()
def bare_forward_rows_per_s(cfg, dtype: torch.dtype, device: str, repeats: int = 3) -> float:
    """The teacher alone over every cached row, inputs already on the device, same batch size."""
    from kd_pipeline.checkpoint import load_teacher
    from kd_pipeline.data.mnist1d import mnist1d

    teacher = load_teacher(cfg)[0].to(device).to(dtype)
    x = torch.cat([mnist1d(s, **cfg.data.kwargs).inputs for s in ("train", "transfer", "test")]).to(device).to(dtype)
    bs = cfg.cache.batch_size
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    best = 0.0
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for i in range(0, len(x), bs):
            teacher(x[i : i + bs])
        sync()
        best = max(best, len(x) / (time.perf_counter() - t0))
    return best


def lm_part(out: Path, device: str, max_bytes: int, small: bool = False) -> dict:
    """A sequence store: an 8-layer d=512 transformer teacher (bf16) over the stdlib corpus, top-32 targets
    (small: a 1-layer d=32 one, 5 steps: a smoke run on a CPU)."""
    from kd_pipeline.data import SplitSamples  # noqa: F401
    from kd_pipeline.prepare import open_samples
    from kd_pipeline.runner import run_pipeline

    model = "kd_pipeline.lm.model:transformer_lm"
    cfg = load({
        "out": str(out / "lm"), "seed": 0, "kind": "sequence",
        "data": {"factory": "kd_pipeline.lm.corpus:stdlib_corpus", "kwargs": {"max_bytes": max_bytes}, "num_classes": 8192,
                 "val_split": "val", "num_workers": 2},
        "teacher": {"factory": model, "kwargs": {"layers": 1, "dim": 32, "heads": 2, "context": 256} if small else
                    {"layers": 8, "dim": 512, "heads": 8, "context": 256}},
        "student": {"factory": model, "kwargs": {"layers": 1, "dim": 32, "heads": 2, "context": 256}},
        "teacher_train": {"steps": 5 if small else 100, "batch_size": 4 if small else 32, "lr": 1e-3, "device": device},
        "student_train": {"steps": 10, "batch_size": 8, "lr": 1e-3},
        "cache": {"path": str(out / "lm-cache"), "top_k": 32, "temperatures": [1.0], "chunk_rows": 65536, "batch_size": 2048 if small else 16384,
                  "device": device, "teacher_dtype": "bfloat16"},
        "sequence": {"context": 256, "recon_tokens": 0, "eval_tokens": 8192},  # the pass alone is timed
    })
    run_pipeline(cfg, only=["prepare_data", "train_teacher"])
    t0 = time.perf_counter()
    run_pipeline(cfg, only=["cache_teacher"], force=True)
    wall = time.perf_counter() - t0
    from kd_pipeline.checkpoint import load_teacher
    from kd_pipeline.store import open_store

    m = open_store(cfg.cache_path).manifest
    samples = open_samples(cfg, ["train", "test"])
    teacher = load_teacher(cfg)[0].to(device).to(torch.bfloat16)
    n = [len(d) for d in samples.datasets]
    per = cfg.cache.batch_size // cfg.sequence.context
    batches = [samples.__getitems__((np.full(len(i), t, np.int64), i)) for t in (0, 1)
               for i in (np.arange(a, min(a + per, n[t]), dtype=np.int64) for a in range(0, n[t], per))]
    xs = [b["x"].to(device) for b in batches]
    with torch.inference_mode():
        for x in xs[:2]:
            teacher(x)
        torch.cuda.synchronize() if device == "cuda" else None
        t0 = time.perf_counter()
        for x in xs:
            teacher(x)
        torch.cuda.synchronize() if device == "cuda" else None
        bare = time.perf_counter() - t0
    tokens = sum(int(b["mask"].sum()) for b in batches)
    return {"tokens": m.num_rows, "pass_s": wall, "pass_tokens_per_s": m.num_rows / wall, "bare_tokens_per_s": tokens / bare,
            "pass_over_bare": (m.num_rows / wall) / (tokens / bare), "reconstruction_kl": m.reconstruction_kl.model_dump() if m.reconstruction_kl else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/out/gpu")
    ap.add_argument("--channels", type=int, default=512)
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of this script without a GPU")
    ap.add_argument("--lm-bytes", type=int, default=3_000_000, help="corpus bytes per split for the LM part (0 = skip it)")
    a = ap.parse_args()
    from kd_pipeline.runner import run_pipeline

    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    run = out / "run"
    name = torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu"
    print(name, "torch", torch.__version__, flush=True)
    base = load(config(run, out / "cache-fp32", a.device, "float32", a.channels, a.samples))
    t0 = time.perf_counter()
    run_pipeline(base, only=["prepare_data", "train_teacher"])
    print(f"prepare + train_teacher on the GPU: {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    for dtype in ("float32", "bfloat16", "float16"):
        cfg = load(config(run, out / f"cache-{dtype}", a.device, dtype, a.channels, a.samples))
        t0 = time.perf_counter()
        run_pipeline(cfg, only=["cache_teacher"], force=True)
        wall = time.perf_counter() - t0
        from kd_pipeline.store import open_store

        store = open_store(cfg.cache_path)
        n = store.manifest.num_rows
        store.close()
        bare = bare_forward_rows_per_s(cfg, getattr(torch, dtype), a.device)
        rows.append({"teacher_dtype": dtype, "rows": n, "pass_s": wall, "pass_rows_per_s": n / wall, "bare_rows_per_s": bare,
                     "pass_over_bare": n / wall / bare})
        print(json.dumps(rows[-1]), flush=True)
    # the same teacher on the CPU (float32), over the first 16,384 rows: the GPU store must agree with it
    cpu = load(config(run, out / "cache-cpu", "cpu", "float32", a.channels, a.samples))
    import zarr

    torch.set_num_threads(8)
    t0 = time.perf_counter()
    run_pipeline(cpu, only=["cache_teacher"], force=True)
    cpu_s = time.perf_counter() - t0
    g, c = zarr.open_group(str(out / "cache-float32"), mode="r"), zarr.open_group(str(out / "cache-cpu"), mode="r")
    ids_g, ids_c = g["topk_indices"][:], c["topk_indices"][:]
    lse_d = float(np.abs(g["lse"][:] - c["lse"][:]).max())
    check = {"cpu_pass_s": cpu_s, "top1_agreement_gpu_cpu": float((ids_g[:, 0] == ids_c[:, 0]).mean()),
             "topk_set_agreement": float((np.sort(ids_g, 1) == np.sort(ids_c, 1)).all(1).mean()), "max_abs_lse_diff": lse_d,
             "samples_parquet_identical": (out / "cache-float32" / "samples.parquet").read_bytes() == (out / "cache-cpu" / "samples.parquet").read_bytes()}
    print(json.dumps(check), flush=True)
    lm = lm_part(out, a.device, a.lm_bytes, small=a.device == "cpu") if a.lm_bytes else None
    print(json.dumps({"lm": lm}), flush=True)
    (out / "gpu_teacher_pass.json").write_text(json.dumps({"device": name, "channels": a.channels,
                                                          "rows": rows, "cpu_vs_gpu": check, "lm": lm}, indent=1))
    print("\n| teacher dtype | rows | pass rows/s | bare forward rows/s | pass / bare |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['teacher_dtype']} | {r['rows']:,} | {r['pass_rows_per_s']:,.0f} | {r['bare_rows_per_s']:,.0f} | {r['pass_over_bare']:.3f} |")


if __name__ == "__main__":
    main()
