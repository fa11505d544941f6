"""Cross-tokenizer students over seeds: ULD from the store vs the same student on hard labels, per character.

Uses a run folder made by `kd run examples/cross-tokenizer/pipeline.yaml` (its store and data; the teacher is
never loaded). Per seed, three students of the config's student model, `student_train` steps each:
- `uld`: alpha * CE + (1 - alpha) * ULD from the store (the train_student stage's objective and stream);
- `ce_aligned`: the same stream with alpha = 1 (CE only): the control that isolates what ULD adds, since the
  student then reads exactly the same windows in the same order;
- `hard`: hard labels on the student tokenizer's own windows (the train_baseline stage).
Each is evaluated like the evaluate stage: nats per character on the validation and test splits (whole
documents, the same texts for every model). Prints one JSON line per run and a summary (mean, standard
deviation over seeds, and the paired difference to `hard`).

Run: OMP_NUM_THREADS=1 python -m bench.uld_quality examples/cross-tokenizer/pipeline.yaml [KEY=VALUE ...] [seeds]
(KEY=VALUE: `--set` overrides of the students' settings, e.g. student_train.steps=300)
"""

from __future__ import annotations

import json
import statistics
import sys

import numpy as np

from kd_pipeline.config import load_config
from kd_pipeline.distributed import Dist
from kd_pipeline.evaluation import split_metrics
from kd_pipeline.models import build_model
from kd_pipeline.objectives import HardLabels
from kd_pipeline.prepare import open_samples, samples_per_batch, student_vocab
from kd_pipeline.store import open_store
from kd_pipeline.stream import shuffled_batches, student_batches
from kd_pipeline.training import fit, seed_everything
from kd_pipeline.uld import CrossTokenizerKD


def train(cfg, name: str, seed: int, store, aligned, own):
    """One student; -> the trained model."""
    seed_everything(seed)
    kind = own.kind
    model = build_model(cfg.student, student_vocab(cfg), "student").train()
    bs = cfg.student_train.batch_size
    if name == "hard":
        module = HardLabels(model, kind)
        batches = lambda skip: shuffled_batches(own, 0, bs, seed, Dist(), 0, skip)  # noqa: E731
    else:
        alpha = cfg.distill.alpha if name == "uld" else 1.0
        module = CrossTokenizerKD(model, kind, cfg.distill.model_copy(update={"alpha": alpha}))
        batches = lambda skip: student_batches(store, aligned, bs, cfg.distill.shuffle_window, seed, Dist(), 0, skip)  # noqa: E731
    fit(module, batches, cfg.student_train, f"{name} seed {seed}")
    return model.eval()


def evaluate(cfg, model, teacher_side, student_side) -> dict:
    """nats per character per split, over the whole documents the teacher's eval_tokens budget reaches."""
    out = {}
    for t, split in enumerate(student_side.names):
        lengths = teacher_side.datasets[t].lengths
        limit = max(1, int(np.searchsorted(np.cumsum(lengths), cfg.sequence.eval_tokens, side="right")))
        ds = student_side.datasets[t]
        limit = int(np.searchsorted(ds.doc, int(teacher_side.datasets[t].doc[limit - 1]) + 1, side="left"))
        r = split_metrics({"m": model}, student_side, t, limit, samples_per_batch(cfg, cfg.evaluate.batch_size))["m"]
        out[split] = r["nats_per_char"]
    return out


def main(path: str, seeds: list[int], sets: list[str] = ()) -> None:
    cfg = load_config(path, sets)
    store = open_store(cfg.cache_path)
    splits = [cfg.data.val_split, cfg.data.test_split]
    aligned = open_samples(cfg, store.manifest.dataset.splits, side="aligned")
    own = open_samples(cfg, [cfg.data.train_split], side="student")
    teacher_side, student_side = open_samples(cfg, splits), open_samples(cfg, splits, side="student")
    runs = []
    for seed in seeds:
        for name in ("uld", "ce_aligned", "hard"):
            r = {"model": name, "seed": seed, **evaluate(cfg, train(cfg, name, seed, store, aligned, own), teacher_side, student_side)}
            print(json.dumps(r), flush=True)
            runs.append(r)
    for split in splits:
        hard = {r["seed"]: r[split] for r in runs if r["model"] == "hard"}
        for name in ("uld", "ce_aligned", "hard"):
            v = [r[split] for r in runs if r["model"] == name]
            d = [r[split] - hard[r["seed"]] for r in runs if r["model"] == name]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            dsd = statistics.stdev(d) if len(d) > 1 else 0.0
            print(f"{split} {name:10s} nats/char {statistics.mean(v):.4f} ± {sd:.4f}  vs hard {statistics.mean(d):+.4f} ± {dsd:.4f}")


if __name__ == "__main__":
    args = sys.argv[2:]
    main(sys.argv[1], [int(a) for a in args if "=" not in a] or [0, 1, 2], [a for a in args if "=" in a])
