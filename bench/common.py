"""Shared by the benchmarks: loading the repo's pipeline config with overrides, and side-by-side timing.

Timing rule (the machine is shared): the measurements being compared run alternately, a few rounds each,
and we report the median over rounds of the per-round ratio, never a ratio of two separate runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from kd_pipeline.config import PipelineConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = ROOT / "pipeline.yaml"


def config(*sets: str, pipeline: Path = PIPELINE) -> PipelineConfig:
    """The default pipeline with `--set`-style overrides, through the same validation as `kd run --set`."""
    return load_config(pipeline, list(sets))


def rate(fn: Callable[[], int]) -> float:
    """fn() does some work and returns the rows it processed -> rows/s."""
    t0 = time.perf_counter()
    rows = fn()
    return rows / (time.perf_counter() - t0)


def alternate(fns: dict[str, Callable[[], int]], rounds: int, setup: dict[str, Callable[[], None]] = {}) -> dict[str, list[float]]:
    """Runs every fn once per round, in turn (order flipped every round) -> name -> rows/s per round.
    setup[name](), if given, runs before each timed call of fns[name], off the clock."""
    rates: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            if name in setup:
                setup[name]()
            rates[name].append(rate(fns[name]))
    return rates


def median_ratio(rates: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of rates[num][r] / rates[den][r] (both measured in the same round)."""
    return statistics.median(a / b for a, b in zip(rates[num], rates[den]))


def summary(rates: dict[str, list[float]]) -> str:
    return ", ".join(f"{n} {statistics.median(v):,.0f} rows/s" for n, v in rates.items())


def verdict(value: float, goal: float, higher_is_better: bool = True) -> str:
    ok = value >= goal if higher_is_better else value <= goal
    return f"{'MET' if ok else 'MISSED'} (goal {'>=' if higher_is_better else '<='} {goal})"


class OnlineKD(nn.Module):
    """Online KD as a loss module (the interface of kd_pipeline/objectives.py): the live teacher's full logits
    as Targets (k = C, so the loss is the dense seed formula, tested equal to 1e-5) -> the same kd_loss the
    cached student uses, on the kind's rows (a sample, or a token of a sequence). The teacher is frozen."""

    def __init__(self, student: nn.Module, teacher: nn.Module, kind, alpha: float, tau: float):
        super().__init__()
        self.student, self.teacher, self.kind, self.alpha, self.tau = student, teacher.eval().requires_grad_(False), kind, alpha, tau

    def forward(self, batch: dict):
        from kd_pipeline.losses import kd_loss
        from kd_pipeline.targets import full_targets

        with torch.no_grad():
            t = full_targets(self.kind.rows(self.teacher(batch["x"]), batch), (self.tau,))
        rows = self.kind.rows(self.student(batch["x"]), batch)
        return kd_loss(rows, self.kind.row_labels(batch), t, self.tau, self.alpha)


def training_samples(cfg: PipelineConfig):
    """The store's training samples (train + transfer splits) as one in-memory split of a SplitSamples, for
    the online-KD student (shuffled_batches over split 0): the rows the cached student trains on."""
    from kd_pipeline.data import ArrayDataset, SplitSamples, open_split
    from kd_pipeline.kinds import kind_for

    ds = [open_split(cfg.data, s) for s in cfg.cached_splits]
    one = ArrayDataset(torch.cat([d.inputs for d in ds]), torch.cat([d.labels for d in ds]))
    return SplitSamples([one], ["+".join(cfg.cached_splits)], kind_for(cfg.kind, cfg.data.num_classes))


def pipeline_store(out: Path, *sets: str) -> PipelineConfig:
    """A real store of the default pipeline (or `sets` overrides) made by the real prepare_data and
    cache_teacher stages, in run folder `out` (skipped when up to date). The teacher is freshly initialised
    with seed 0 and saved as the stage's checkpoint: reading and training speed do not depend on its weights."""
    from kd_pipeline.checkpoint import save_model
    from kd_pipeline.models import build_model
    from kd_pipeline.runner import run_pipeline

    cfg = config(*sets, f"out={out}")
    ckpt = cfg.out_dir / "teacher.safetensors"
    if not ckpt.is_file():
        torch.manual_seed(0)
        save_model(build_model(cfg.teacher, cfg.data.num_classes, "teacher"), ckpt, {"factory": cfg.teacher.factory, "kwargs": cfg.teacher.kwargs})
    run_pipeline(cfg, only=["prepare_data", "cache_teacher"])
    return cfg


def bench_args(doc: str) -> argparse.ArgumentParser:
    """--threads and --set, shared by every benchmark; call `apply_threads(args)` after parsing."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (see docs/benchmarks.md: 1 on a shared 2-core box)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra KEY=VALUE overrides (as kd run --set)")
    return ap


def apply_threads(args: argparse.Namespace) -> None:
    """On a shared, oversubscribed 2-core machine two intra-op threads spend most of each small op waiting
    for a descheduled peer (MLP step measured at 150 ms with 2 threads vs 11 ms with 1); both sides of
    every ratio run with the same setting. Also passed on as the config's `threads`, which run_pipeline applies."""
    torch.set_num_threads(args.threads)
    args.sets.append(f"threads={args.threads}")


def store_bench_args(doc: str) -> argparse.ArgumentParser:
    """Command-line options shared by the benchmarks that read the benchmark store."""
    ap = bench_args(doc)
    ap.add_argument("--rounds", type=int, default=5, help="alternated rounds; the median ratio is reported")
    ap.add_argument("--out", type=Path, default=Path("bench/out/store"), help="run folder of the benchmark store")
    return ap
