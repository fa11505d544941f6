"""Student step benchmark: training rows/s of the same student three ways, alternated in one run.

    .venv/bin/python -m bench.student_step                  # pipeline.yaml's student, batch 100, 5 rounds
    .venv/bin/python -m bench.student_step --steps 200 --set "student.kwargs.hidden=[1024, 1024]"   # wide student

- cached KD: the student stage's path — BlockStream over a real store (made by the cache_teacher stage) ->
  kd_batches -> kd_step (top-k + tail KL from the store, CE on labelled rows), in `fit`;
- hard labels: the baseline stage's path — random_batches over the labelled split -> ce_step, in `fit`;
- online KD: random_batches over the same train + transfer rows, the live teacher's forward every step,
  full logits (k = C, the dense seed formula) -> kd_loss, in `fit`.
Each variant keeps its own iterator across rounds (steady state: the stream's reader thread is warm).
Goals: cached / hard >= 0.95; cached / online is reported (> 1 is the point of caching).
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.common import alternate, apply_threads, median_ratio, online_kd_step, pipeline_store, store_bench_args, summary, verdict
from kd_pipeline.checkpoint import load_model
from kd_pipeline.config import TrainConfig
from kd_pipeline.data import load_splits
from kd_pipeline.distill import ce_step, check_store_for, kd_batches, kd_step, rows_aligned
from kd_pipeline.models import build_model
from kd_pipeline.store import open_store
from kd_pipeline.stream import BlockStream
from kd_pipeline.training import fit, random_batches

GOAL = 0.95
WIDE = ["student.kwargs.hidden=[1024, 1024]"]  # ~100x the default student's FLOPs: where the student dominates


def run(out: Path, steps: int, rounds: int, sets: list[str] = (), log=print) -> dict:
    cfg = pipeline_store(out, *sets)
    store = open_store(cfg.cache_path)
    splits = load_splits(cfg.data, store.manifest.dataset.splits)
    check_store_for(store, splits, cfg.data.num_classes, cfg.distill.temperature)
    x_rows, y_rows = rows_aligned(store, splits)
    x_lab, y_lab = splits[cfg.data.train_split]
    bs = cfg.student_train.batch_size
    tcfg = TrainConfig(steps=steps, batch_size=bs, lr=cfg.student_train.lr, log_every=steps)
    teacher = load_model(build_model(cfg.teacher, cfg.data.num_classes), cfg.out_dir / "teacher.safetensors", "teacher")
    teacher.eval().requires_grad_(False)

    def student():
        torch.manual_seed(cfg.seed)  # same initial weights for every variant
        return build_model(cfg.student, cfg.data.num_classes).train()

    s_kd, s_ce, s_on = student(), student(), student()
    kd, extra = kd_step(s_kd, cfg.distill, store, x_rows)
    stream = BlockStream(store, bs, cfg.distill.shuffle_window, cfg.seed)
    variants = {
        "cached KD": ([*s_kd.parameters(), *extra], kd_batches(stream, x_rows, y_rows, store), kd),
        "hard labels": (list(s_ce.parameters()), random_batches(x_lab, y_lab, bs, cfg.seed), ce_step(s_ce)),
        "online KD": (list(s_on.parameters()), random_batches(x_rows, y_rows, bs, cfg.seed),
                      online_kd_step(s_on, teacher, cfg.distill.alpha, cfg.distill.temperature)),
    }

    def trainer(name):
        params, batches, step = variants[name]
        return lambda: (fit(params, batches, step, tcfg, f"bench {name}"), steps * bs)[1]

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
