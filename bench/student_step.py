"""Student step benchmark: training rows/s of the same student three ways, alternated in one run.

    .venv/bin/python -m bench.student_step                  # pipeline.yaml's student, batch 100, 5 rounds
    .venv/bin/python -m bench.student_step --steps 200 --set "student.kwargs.hidden=[1024, 1024]"   # wide student

All three run the library's `training.fit` on a loss module (kd_pipeline/objectives.py), as the stages build
them (same batch size, same initial weights):
- cached KD: the train_student stage's path — `student_batches` over a real store (made by the prepare_data
  and cache_teacher stages; targets per block from the store, inputs fetched by sample id through the
  DataLoader) -> `CachedKD` (top-k + tail KL from the store, CE on labelled rows);
- hard labels: the train_baseline stage's path — `shuffled_batches` over the labelled split -> `HardLabels`;
- online KD: `shuffled_batches` over the same train + transfer rows (one in-memory split), the live teacher's
  forward every step, full logits (k = C, the dense seed formula) -> the same `kd_loss` (bench.common.OnlineKD).
Each variant keeps its own iterator across rounds (steady state: the stream's reader thread is warm).
Goals: cached / hard >= 0.95; cached / online is reported (> 1 is the point of caching).
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.common import OnlineKD, alternate, apply_threads, median_ratio, pipeline_store, store_bench_args, summary, training_samples, verdict
from kd_pipeline.checkpoint import load_teacher
from kd_pipeline.config import TrainConfig
from kd_pipeline.distill import check_store_for
from kd_pipeline.models import build_model
from kd_pipeline.objectives import CachedKD, HardLabels
from kd_pipeline.prepare import load_summary, open_samples
from kd_pipeline.store import open_store
from kd_pipeline.stream import shuffled_batches, student_batches
from kd_pipeline.training import fit

GOAL = 0.95
WIDE = ["student.kwargs.hidden=[1024, 1024]"]  # ~100x the default student's FLOPs: where the student dominates


def run(out: Path, steps: int, rounds: int, sets: list[str] = (), log=print) -> dict:
    cfg = pipeline_store(out, *sets)
    store = open_store(cfg.cache_path)
    m = store.manifest
    check_store_for(store, cfg, load_summary(cfg), cfg.out_dir / "teacher.safetensors")
    samples = open_samples(cfg, m.dataset.splits)
    labelled = open_samples(cfg, [cfg.data.train_split])
    kind, bs, workers = samples.kind, cfg.student_train.batch_size, cfg.data.num_workers
    tcfg = TrainConfig(steps=steps, batch_size=bs, lr=cfg.student_train.lr, log_every=steps, checkpoint_every=0)
    teacher = load_teacher(cfg)[0]

    def student():
        torch.manual_seed(cfg.seed)  # same initial weights for every variant
        return build_model(cfg.student, m.num_classes, "student").train()

    kd_batches = student_batches(store, samples, bs, cfg.distill.shuffle_window, cfg.seed, num_workers=workers)
    probe = next(kd_batches)  # sizes the feature projector, as the stage's probe does
    variants = {
        "cached KD": (CachedKD(student(), kind, cfg.distill, m.features, probe), kd_batches),
        "hard labels": (HardLabels(student(), kind), shuffled_batches(labelled, 0, bs, cfg.seed, num_workers=workers)),
        "online KD": (OnlineKD(student(), teacher, kind, cfg.distill.alpha, cfg.distill.temperature),
                      shuffled_batches(training_samples(cfg), 0, bs, cfg.seed, num_workers=workers)),
    }

    def trainer(name):
        module, batches = variants[name]
        return lambda: (fit(module, lambda skip: batches, tcfg, f"bench {name}"), steps * bs)[1]

    fns = {name: trainer(name) for name in variants}
    for fn in fns.values():
        fn()  # warm-up round, not timed
    rates = alternate(fns, rounds)
    store.close()
    r_hard = median_ratio(rates, "cached KD", "hard labels")
    r_online = median_ratio(rates, "cached KD", "online KD")
    log(f"student {cfg.student.factory} {cfg.student.kwargs}, batch {bs}, {steps} steps x {rounds} rounds: {summary(rates)}")
    log(f"  cached KD / hard labels = {r_hard:.3f}  {verdict(r_hard, GOAL)}")
    log(f"  cached KD / online KD   = {r_online:.3f}  (teacher {cfg.teacher.factory} {cfg.teacher.kwargs})")
    return {"cached/hard": r_hard, "cached/online": r_online, "rates": rates}


def main(argv: list[str] | None = None) -> None:
    ap = store_bench_args(__doc__)
    ap.add_argument("--steps", type=int, default=1000, help="optimizer steps per timed call")
    a = ap.parse_args(argv)
    apply_threads(a)
    run(a.out, a.steps, a.rounds, a.sets)


if __name__ == "__main__":
    main()
