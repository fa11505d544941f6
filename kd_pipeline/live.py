"""The student modes that are not from the cache: `distill.mode: online | mutual` (classification).

online: the live-teacher reference. The trained teacher (<out>/teacher.safetensors) runs on every batch;
  its full logits (k = C) and its `cache.features` modules' outputs become the batch's Targets, and the loss
  is CachedKD's, unchanged: what the cache approximates, at the cost of a teacher forward per step.
mutual: deep mutual learning (Zhang et al., CVPR 2018): two students of cfg.student's model, different
  initialisations, trained together, each on its labels and the other's current predictions
  (objectives.MutualLearning). No teacher, no store. The first is `student.safetensors`, the second
  `student_peer.safetensors`.
Both draw the rows the store would hold (the training splits) from the dataset, shuffled together.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .cachepass import probe_features
from .checkpoint import load_teacher, save_model
from .curves import validation_probe
from .distributed import Dist, device_for
from .models import build_model, check_output
from .objectives import MutualLearning, OnlineKD
from .prepare import load_summary, open_samples
from .store.format import FeatureInfo
from .stream import shuffled_batches
from .training import fit, per_rank, seed_everything, stage_checkpoint


def peer_checkpoint(cfg) -> Path:
    return cfg.out_dir / "student_peer.safetensors"


def train_live(cfg, out: Path, name: str, dist: Dist = Dist()) -> None:
    """Trains the student of `distill.mode` online or mutual -> `out` (and the mutual peer's checkpoint),
    <out_dir>/logs/<name>.jsonl. Online raises KDError when the teacher checkpoint is missing."""
    from .student import PARAMS

    seed_everything(cfg.seed)
    summary = load_summary(cfg)
    samples = open_samples(cfg, cfg.cached_splits)
    kind, C = samples.kind, cfg.data.num_classes
    probe = samples.head()
    student = build_model(cfg.student, C, "student")
    check_output(student, probe, kind, C, "student")
    if cfg.distill.mode == "online":
        teacher, sha = load_teacher(cfg)
        shapes = probe_features(teacher, samples, kind, cfg.cache.features, torch.device("cpu"), torch.float32)
        infos = {n: FeatureInfo(shape=s, dtype="float32", module=cfg.cache.features[n]) for n, s in shapes.items()}
        module = OnlineKD(student.train(), teacher, kind, cfg.distill, cfg.cache.features, infos, probe)
    else:
        sha = None
        peer = build_model(cfg.student, C, "student")  # drawn after the first: another initialisation
        module = MutualLearning(student.train(), peer.train(), kind)
    bs = per_rank(cfg.student_train.batch_size, dist, "student_train")

    def batches(skip: int):
        return shuffled_batches(samples, list(range(len(cfg.cached_splits))), bs, cfg.seed, dist, cfg.data.num_workers, skip)

    d = cfg.model_dump(mode="json")
    ckpt = stage_checkpoint(cfg, name, cfg.student_train, {"student": module}, {k: d[k] for k in PARAMS}, summary["fingerprint"], sha, dist.world)
    device = device_for(dist, cfg.student_train.device)
    fit(module, batches, cfg.student_train, name, cfg.out_dir / "logs" / f"{name}.jsonl", ckpt, dist, device,
        validation_probe(cfg, student, cfg.student_train, device) if dist.is_main else None)
    if dist.is_main:
        meta = {"factory": cfg.student.factory, "kwargs": cfg.student.kwargs, "mode": cfg.distill.mode}
        save_model(student.cpu(), out, meta)
        if cfg.distill.mode == "mutual":
            save_model(module.students[1].cpu(), peer_checkpoint(cfg), meta)
    ckpt.remove(dist)
