"""`kd sweep PIPELINE --tau 1,2,4 --alpha 0.1,0.5,0.9`: one KD student per (τ, α) cell, all from the one store.

The pipeline's own stages up to the teacher pass run first (skipped when up to date: the teacher runs at
most once, never per cell). Each cell is then the train_student stage in a run sub-folder
`<out>/sweep/tau<τ>_alpha<α>/` of a config without a teacher (kd_pipeline/consumer.py: no stage that could
write a store exists for it) whose cache.path is the pipeline's store, read-only (the store belongs to the
pipeline's run folder: kd_pipeline/ownership.py). A cell's stamp and its `result.json` make the sweep
resumable: a finished cell is skipped on rerun, a changed one (another --set) trains again.

Cells run in `jobs` worker processes (spawned: a fresh interpreter each, `threads: 1`), each writing its own
log to `<cell>/cell.log`. The baseline for reference is the pipeline's own when its train_baseline stage is up
to date for these settings, else trained once in `<out>/sweep/baseline/`. Every student is measured on the
whole test split (sequence: its first sequence.eval_tokens tokens): accuracy, or perplexity for a sequence.
Writes `<out>/sweep/sweep.json`, `sweep.md` (the table) and `sweep.png` (the heatmap).
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Callable

from .config import PipelineConfig
from .errors import ConfigError
from .summary import display_name


def parse_values(text: str, option: str, lo: float | None = None, hi: float | None = None) -> list[float]:
    """'1,2,4' -> [1.0, 2.0, 4.0] (distinct, in the order given); ConfigError naming the option otherwise."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{option} {text}: expected numbers separated by commas, e.g. 1,2,4") from None
    if not values or len(set(values)) != len(values):
        raise ConfigError(f"{option} {text}: expected distinct numbers separated by commas, e.g. 1,2,4")
    for v in values:
        if (lo is not None and v < lo) or (hi is not None and v > hi) or v != v:
            raise ConfigError(f"{option} {text}: {v:g} is outside [{lo:g}, {hi:g}]" if hi is not None else f"{option} {text}: {v:g} must be > {lo:g}")
    return values


def check_sweep(cfg: PipelineConfig, taus: list[float]) -> None:
    """Before anything runs: a sweep of cached students over temperatures the store declares."""
    from .losses import find_temperature
    from .store.reader import peek_manifest

    d = cfg.distill
    if d.mode != "cached" or d.teachers:
        raise ConfigError("kd sweep: distill.mode cached from the pipeline's one store only (not online, mutual or distill.teachers)")
    # a pipeline with a teacher (re)builds its store with cache.temperatures before the cells run
    m = peek_manifest(cfg.cache_path)
    declared = list(m.temperatures) if cfg.consumer and m is not None else list(cfg.cache.temperatures)
    for t in taus:
        if find_temperature(declared, t) is None:
            fix = ("a received store's temperatures are fixed" if cfg.consumer
                   else "add it to cache.temperatures, which rebuilds the store")
            raise ConfigError(f"--tau {t:g}: not one of the store's temperatures {declared} (the teacher pass stores the "
                              f"exact tail for those alone); {fix}")


def cell_name(tau: float, alpha: float) -> str:
    return f"tau{tau:g}_alpha{alpha:g}"


def cell_config(cfg: PipelineConfig, folder: Path, **distill) -> PipelineConfig:
    """The pipeline as a consumer of its own store, in `folder`, with distill keys replaced (tau, alpha)."""
    from .store.location import is_remote

    store = cfg.cache_path if is_remote(cfg.cache_path) else Path(cfg.cache_path).resolve()
    return cfg.model_copy(update={
        "out": str(folder), "teacher": None, "teacher_train": None, "threads": 1,
        "cache": cfg.cache.model_copy(update={"path": str(store)}),
        "distill": cfg.distill.model_copy(update=distill),
    })


def run_cell(cell: PipelineConfig, stage: str, summary: Path) -> dict:
    """A worker's job: `stage` (train_student or train_baseline) in the cell's folder, then the model on the test
    split. -> the cell's result (also <cell>/result.json); a finished cell returns its result unchanged."""
    from .checkpoint import file_sha256

    folder = cell.out_dir
    (folder / "data").mkdir(parents=True, exist_ok=True)
    mine = folder / "data" / "summary.json"
    if not mine.is_file() or mine.read_bytes() != summary.read_bytes():
        shutil.copyfile(summary, mine)  # the pipeline's data check, not redone per cell
    t0 = time.perf_counter()
    with open(folder / "cell.log", "a") as log, redirect_stdout(log), redirect_stderr(log):
        from .runner import run_pipeline

        ran = run_pipeline(cell, only=[stage])
    ckpt = folder / ("student.safetensors" if stage == "train_student" else "baseline.safetensors")
    sha = file_sha256(ckpt)
    done = folder / "result.json"
    if not ran and done.is_file():
        old = json.loads(done.read_text())
        if old.get("checkpoint_sha256") == sha:
            return {**old, "status": "done before"}
    result = {"tau": cell.distill.temperature, "alpha": cell.distill.alpha, "stage": stage, "checkpoint_sha256": sha,
              "train_seconds": round(time.perf_counter() - t0, 1), **test_metrics(cell, ckpt)}
    done.write_text(json.dumps(result, indent=1))
    return {**result, "status": "trained"}


def test_metrics(cfg: PipelineConfig, ckpt: Path) -> dict:
    """The student checkpoint's accuracy, cross-entropy and perplexity on the test split."""
    from .checkpoint import load_model
    from .curves import eval_limit
    from .evaluation import split_metrics
    from .models import build_model
    from .prepare import open_samples, samples_per_batch

    model = load_model(build_model(cfg.student, cfg.data.num_classes, "student"), ckpt, "student")
    samples = open_samples(cfg, [cfg.data.test_split])
    ds = samples.datasets[0]
    limit = len(ds) if cfg.kind == "classification" else eval_limit(cfg, ds, cfg.sequence.eval_tokens)
    r = split_metrics({"m": model}, samples, 0, limit, samples_per_batch(cfg, cfg.evaluate.batch_size), reference="")["m"]
    return {k: r[k] for k in ("accuracy", "cross_entropy", "perplexity", "rows")}


def run_sweep(cfg: PipelineConfig, taus: list[float], alphas: list[float], jobs: int = 1, log: Callable[[str], None] = print) -> dict:
    """Trains and measures every cell (and the baseline if needed); writes sweep.json, sweep.md, sweep.png.
    -> {"cells": [...], "baseline": {...}, "kind", "test_split", "png", "md"}."""
    from .runner import is_fresh, load_stages, pipeline_stages, run_pipeline

    check_sweep(cfg, taus)
    first = [s.NAME for s in pipeline_stages(cfg) if s.NAME in ("prepare_data", "train_teacher", "cache_teacher")]
    run_pipeline(cfg, only=first)  # each skipped when up to date: the teacher pass runs at most once
    folder = cfg.out_dir / "sweep"
    summary = cfg.out_dir / "data" / "summary.json"
    jobs_list = [(cell_config(cfg, folder / cell_name(t, a), temperature=t, alpha=a), "train_student") for a in alphas for t in taus]
    baseline_stage = next(s for s in load_stages() if s.NAME == "train_baseline")
    own_baseline = is_fresh(cfg, baseline_stage)
    if not own_baseline:
        jobs_list.append((cell_config(cfg, folder / "baseline"), "train_baseline"))
    n = len(taus) * len(alphas)
    log(f"sweep: {n} KD student{'s' if n != 1 else ''} (τ {', '.join(f'{t:g}' for t in taus)} × α {', '.join(f'{a:g}' for a in alphas)}) "
        f"from {cfg.cache_path}, {jobs} worker process{'es' if jobs > 1 else ''}; logs in {folder}/<cell>/cell.log")
    results = []
    if jobs == 1:
        for cell, stage in jobs_list:
            results.append(_announce(run_cell(cell, stage, summary), cfg.kind, log))
    else:
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no forked locks or threads
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = [pool.submit(run_cell, cell, stage, summary) for cell, stage in jobs_list]
            try:
                for f in futures:
                    results.append(_announce(f.result(), cfg.kind, log))
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    cells = [r for r in results if r["stage"] == "train_student"]
    if own_baseline:
        base = {"source": str(cfg.out_dir / "baseline.safetensors"), **test_metrics(cfg, cfg.out_dir / "baseline.safetensors")}
    else:
        base = {"source": str(folder / "baseline" / "baseline.safetensors"), **next(r for r in results if r["stage"] == "train_baseline")}
    out = {"kind": cfg.kind, "test_split": cfg.data.test_split, "store": str(cfg.cache_path), "taus": taus, "alphas": alphas,
           "student_train": cfg.student_train.model_dump(mode="json"), "cells": cells, "baseline": base}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sweep.json").write_text(json.dumps(out, indent=1))
    out["md"] = str(write_table(folder / "sweep.md", out))
    out["png"] = str(heatmap(folder / "sweep.png", out))
    return out


def _announce(r: dict, kind: str, log) -> dict:
    what = "baseline (hard labels)" if r["stage"] == "train_baseline" else f"τ={r['tau']:g} α={r['alpha']:g}"
    when = "done before, skipped" if r["status"] == "done before" else f"trained and measured in {r['train_seconds']:.1f} s"
    figure = f"test perplexity {r['perplexity']:.2f}" if kind == "sequence" else f"{100 * r['accuracy']:.2f}% test accuracy"
    log(f"  {what}: {figure} ({when})")
    return r


def _value(kind: str, r: dict) -> float:
    return r["perplexity"] if kind == "sequence" else 100 * r["accuracy"]


def write_table(path: Path, s: dict) -> Path:
    kind = s["kind"]
    what = "perplexity (lower is better)" if kind == "sequence" else "accuracy (%)"
    b = _value(kind, s["baseline"])
    by = {(c["tau"], c["alpha"]): _value(kind, c) for c in s["cells"]}
    st = s["student_train"]
    lines = [f"# kd sweep: KD student {s['test_split']} {what} per τ and α", "",
             f"One student per cell, each trained {st['steps']:,} steps × batch {st['batch_size']} (lr {st['lr']:g}) from the "
             f"store `{s['store']}`; {display_name('baseline')}: {b:.2f}. In brackets: the cell minus the baseline.", "",
             "| α \\ τ | " + " | ".join(f"{t:g}" for t in s["taus"]) + " |", "|---|" + "---|" * len(s["taus"])]
    for a in s["alphas"]:
        lines.append(f"| {a:g} | " + " | ".join(f"{by[(t, a)]:.2f} ({by[(t, a)] - b:+.2f})" for t in s["taus"]) + " |")
    lines += ["", "![heatmap](sweep.png)", ""]
    path.write_text("\n".join(lines))
    return path


def heatmap(path: Path, s: dict) -> Path:
    """Cells coloured by their figure, centred on the baseline's (green: better than the baseline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    kind, taus, alphas = s["kind"], s["taus"], s["alphas"]
    by = {(c["tau"], c["alpha"]): _value(kind, c) for c in s["cells"]}
    grid = np.array([[by[(t, a)] for t in taus] for a in alphas])
    b = _value(kind, s["baseline"])
    span = max(abs(grid - b).max(), 1e-6)
    lower_better = kind == "sequence"
    fig, ax = plt.subplots(figsize=(1.6 * len(taus) + 3.2, 1.0 * len(alphas) + 2.2))
    im = ax.imshow(grid, cmap="RdYlGn_r" if lower_better else "RdYlGn", norm=TwoSlopeNorm(b, b - span, b + span), aspect="auto")
    for i, a in enumerate(alphas):
        for j, t in enumerate(taus):
            v = grid[i, j]
            r, g, bl, _ = im.cmap(im.norm(v))
            ink = "white" if 0.299 * r + 0.587 * g + 0.114 * bl < 0.5 else "black"  # readable on dark cells
            ax.text(j, i, f"{v:.2f}\n({v - b:+.2f})", ha="center", va="center", fontsize=10, color=ink)
    ax.set_xticks(range(len(taus)), [f"{t:g}" for t in taus])
    ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_xlabel("τ (distill.temperature)")
    ax.set_ylabel("α (weight of CE on labels)")
    unit = "perplexity" if lower_better else "accuracy (%)"
    ax.set_title(f"KD student {s['test_split']} {unit}\none student per cell, {s['student_train']['steps']:,} steps each\n"
                 f"{display_name('baseline')}: {b:.2f}; in brackets: cell − baseline", fontsize=11)
    bar = fig.colorbar(im, ax=ax)
    bar.ax.axhline(b, color="black", lw=1.5)
    bar.set_label(f"{unit}; black line: baseline")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

