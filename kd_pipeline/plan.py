"""`kd plan PIPELINE` (= `kd run --dry-run`): what `kd run` would do, before anything long starts.

- Each stage: up to date, or would run and why — the runner's stamps (kd_pipeline/runner.py
  `stale_reasons`: which parameter changed and from what, which code file, input or output), and stages
  whose input an earlier stage would rebuild.
- The store: rows × bytes per row (targets, features, tokens) of the manifest the teacher pass would write,
  against the free space of the disk it goes to. Rows come from the data summary, so prepare_data (the data
  check, which writes nothing but <out>/data/) is run first when it is not up to date; the plan says so.
- The teacher pass's time: a few batches of `cache.batch_size` fetched and run through the teacher and
  reduced to targets exactly as the pass does (cachepass._forward + targets.teacher_rows), timed after one
  warm-up batch; no store is written. A teacher not trained yet is timed with its initial weights (same cost).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from .config import PipelineConfig
from .summary import human_bytes, manifest_bytes_per_row


def make_plan(cfg: PipelineConfig, only: list[str] = (), probe_batches: int = 3) -> dict:
    """-> {"pipeline", "stages": [{"stage", "runs", "why": [...]}], "store": {...} | None, "probe": {...} | None}.
    Runs prepare_data first when it is not up to date (its row says so)."""
    from .runner import pipeline_stages, preflight, run_pipeline, stale_reasons

    stages = pipeline_stages(cfg, only)
    preflight(cfg, stages, only)  # what kd run would refuse before any stage, the plan refuses too
    ran_now = stale_reasons(cfg, stages[0])  # prepare_data: the data check; the store's rows come from its summary
    if ran_now:
        run_pipeline(cfg, only=["prepare_data"])
    rows, rebuilt = [], {}  # rebuilt: output path -> the stage that would rewrite it
    for s in stages:
        if s.NAME == "prepare_data" and ran_now:
            rows.append({"stage": s.NAME, "runs": False, "why": [f"ran now, as the plan needs its data summary ({'; '.join(ran_now)})"]})
            continue
        if only and s.NAME not in only:
            rows.append({"stage": s.NAME, "runs": False, "why": ["not asked (--stage)"]})
            continue
        why = stale_reasons(cfg, s)
        why += [f"input {p} is rebuilt by {rebuilt[str(p)]}" for p in s.deps(cfg) if str(p) in rebuilt and not why]
        if why:
            rebuilt.update({str(p): s.NAME for p in s.outs(cfg)})
        rows.append({"stage": s.NAME, "runs": bool(why), "why": why})
    runs = {r["stage"] for r in rows if r["runs"]}
    plan = {"pipeline": str(cfg.out_dir), "stages": rows, "store": store_plan(cfg, "cache_teacher" in runs), "probe": None}
    if "cache_teacher" in runs and probe_batches > 0:
        plan["probe"] = probe_teacher(cfg, plan["store"]["rows"], probe_batches, trained="train_teacher" not in runs)
    return plan


def _planned_manifest(cfg: PipelineConfig):
    """The manifest the teacher pass would write (feature shapes from a forward of the untrained teacher)."""
    from .cachepass import build_manifest, probe_features
    from .models import build_model
    from .prepare import load_summary, open_samples, store_layout
    from .views import build_views

    summary = load_summary(cfg)
    samples = open_samples(cfg, summary["store_splits"])
    layout = store_layout(cfg, summary, samples)
    teacher = build_model(cfg.teacher, cfg.data.num_classes, "teacher").eval()
    shapes = probe_features(teacher, samples, samples.kind, cfg.cache.features, torch.device("cpu"), torch.float32)
    got = build_views(cfg)
    return build_manifest(cfg, summary, layout, "0" * 64, shapes, got and got[1]), layout, samples


def store_plan(cfg: PipelineConfig, rebuilt: bool) -> dict | None:
    """Rows, bytes per row and total of the store the pipeline reads (the planned one when the teacher pass
    would run), the size of the one there now, and the free space where it goes."""
    from .inspect import size_on_disk
    from .store.location import is_remote
    from .store.reader import peek_manifest

    now = peek_manifest(cfg.cache_path)
    m = _planned_manifest(cfg)[0] if rebuilt and not cfg.consumer else now
    if m is None:
        return None
    per_row = manifest_bytes_per_row(m)
    out = {"path": str(cfg.cache_path), "rows": m.num_rows, "bytes_per_row": per_row, "bytes": m.num_rows * per_row,
           "unit": "token" if m.kind == "sequence" else "row", "planned": rebuilt and not cfg.consumer,
           "on_disk": size_on_disk(cfg.cache_path) if now is not None else None, "free": None}
    if not is_remote(cfg.cache_path):
        p = Path(cfg.cache_path).resolve()
        while not p.exists():
            p = p.parent
        out["free"] = shutil.disk_usage(p).free
    return out


def probe_teacher(cfg: PipelineConfig, store_rows: int, batches: int, trained: bool) -> dict:
    """Times `batches` teacher batches of the pass (fetch, forward, targets) after a warm-up one.
    -> {"rows_per_s", "rows", "seconds", "estimate_s", "device", "weights"}."""
    from .cachepass import _forward
    from .checkpoint import load_teacher
    from .distributed import Dist, device_for
    from .hooks import capture
    from .models import build_model
    from .prepare import samples_per_batch
    from .targets import teacher_rows

    manifest, layout, samples = _planned_manifest(cfg)
    have = trained and (cfg.teacher_train is None or (cfg.out_dir / "teacher.safetensors").is_file())
    teacher = load_teacher(cfg)[0] if have else build_model(cfg.teacher, cfg.data.num_classes, "teacher")
    device, dtype = device_for(Dist(), cfg.cache.device), getattr(torch, cfg.cache.teacher_dtype)
    teacher = teacher.to(device=device, dtype=dtype).eval().requires_grad_(False)
    bs = samples_per_batch(cfg, cfg.cache.batch_size)
    span = layout.overlapping(0, min(layout.num_rows, 2 * (batches + 1) * cfg.cache.batch_size))  # batch_size counts rows
    keys = [(span.split[a : a + bs], span.sample_id[a : a + bs]) for a in range(0, len(span), bs)][: batches + 1]
    timed = []  # (seconds, rows) per batch
    with torch.inference_mode(), capture(teacher, cfg.cache.features, "cache.features", "teacher") as out:
        for key in keys:
            t0 = time.perf_counter()
            got = _forward(teacher, samples.__getitems__(key), samples.kind, cfg.cache.features, device, dtype, out)
            n = len(teacher_rows(got.pop("logits"), manifest)["lse"])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            timed.append((time.perf_counter() - t0, n))
    timed = timed[1:] or timed  # the first batch warms up (unless it is the only one)
    t, rows = sum(x for x, _ in timed), sum(n for _, n in timed)
    rate = rows / max(t, 1e-9)
    return {"rows_per_s": rate, "rows": rows, "seconds": t, "estimate_s": store_rows / rate, "device": str(device),
            "weights": "trained" if have else "initial"}


def render(plan: dict) -> list[str]:
    lines = [f"kd plan: run folder {plan['pipeline']}"]
    width = max(len(r["stage"]) for r in plan["stages"])
    for r in plan["stages"]:
        state = "would run: " + "; ".join(r["why"]) if r["runs"] else ("up to date" if not r["why"] else r["why"][0])
        lines.append(f"  {r['stage']:<{width}}  {state}")
    s = plan["store"]
    if s is None:
        lines.append("store: none yet, and this pipeline cannot make one")
    else:
        unit = s["unit"]
        what = "would write" if s["planned"] else "reads"
        line = f"store: {what} {s['path']}: {s['rows']:,} {unit}s × {s['bytes_per_row']:,} B/{unit} = {human_bytes(s['bytes'])}"
        if s["on_disk"] is not None:
            line += f" (there now: {human_bytes(s['on_disk'])})"
        if s["free"] is not None and s["planned"]:
            fits = "fits" if s["bytes"] < s["free"] else "DOES NOT FIT"
            line += f"; free on its disk: {human_bytes(s['free'])}: {fits}"
        lines.append(line)
    p = plan["probe"]
    if p is not None:
        weights = "" if p["weights"] == "trained" else "; the teacher is not trained yet: timed with its initial weights, the same cost"
        lines.append(f"teacher pass: {p['rows_per_s']:,.0f} {s['unit']}s/s on {p['device']} ({p['rows']:,} {s['unit']}s timed in {p['seconds']:.3f} s{weights}) "
                     f"-> {_duration(p['estimate_s'])} for {s['rows']:,} {s['unit']}s, plus the block writes")
    return lines


def _duration(s: float) -> str:
    if s < 1:
        return "under a second"
    if s < 90:
        return f"about {s:.0f} s"
    if s < 5400:
        return f"about {s / 60:.0f} min"
    return f"about {s / 3600:.1f} h"
