"""The student side: check a store against the student's dataset, align inputs with store rows, and build
the KD training step. Nothing here touches the teacher: targets come from the store only."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import file_sha256
from .config import DistillConfig
from .data import fingerprint
from .errors import StoreError
from .hooks import capture
from .losses import kd_loss, temperature_index
from .store import CacheStore
from .targets import Targets
from .training import Batch


def check_store_for(store: CacheStore, splits: dict, num_classes: int, tau: float, teacher=None) -> None:
    """Refuse a store made for other data, another class count, another teacher, or without lse for tau.

    teacher: optional (component config, checkpoint path) of this run's teacher. Compared only when the
    checkpoint exists: a store received from elsewhere, with no teacher in the run folder, is taken as is."""
    m = store.manifest
    again = "run `kd run --stage cache_teacher` to rebuild it"
    if m.num_classes != num_classes:
        raise StoreError(f"{store.path}: store has num_classes={m.num_classes}, data.num_classes is {num_classes}; re-run cache_teacher ({again})")
    fp = fingerprint(splits)
    if fp != m.dataset.fingerprint:
        raise StoreError(
            f"{store.path}: store was made for other data (dataset fingerprint {m.dataset.fingerprint[:19]}…, "
            f"this dataset {fp[:19]}…); re-run cache_teacher for this dataset ({again})"
        )
    if teacher is not None and Path(teacher[1]).is_file():
        comp, ckpt = teacher
        if (m.teacher.factory, m.teacher.kwargs) != (comp.factory, dict(comp.kwargs)):
            raise StoreError(
                f"{store.path}: store was made by teacher {m.teacher.factory} {m.teacher.kwargs}, the config's teacher is "
                f"{comp.factory} {dict(comp.kwargs)}; {again}"
            )
        sha = file_sha256(Path(ckpt))
        if sha != m.teacher.checkpoint_sha256:
            raise StoreError(
                f"{store.path}: store was made by another teacher checkpoint (sha256 {m.teacher.checkpoint_sha256[:12]}…, "
                f"{ckpt} is {sha[:12]}…); {again}"
            )
    temperature_index(tuple(m.temperatures), tau)


def rows_aligned(store: CacheStore, splits: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels gathered into store row order: x_rows (R, ...), y_rows (R,) with -1 = no label.
    Labels come from the store's table (transfer rows are null there)."""
    t = store.samples
    split = t["split"].to_numpy(zero_copy_only=False)
    sid = t["sample_id"].to_numpy().copy()  # arrow buffers are read-only; torch wants writable
    row = t["row"].to_numpy().copy()
    lab = t["label"].fill_null(-1).to_numpy().astype(np.int64)
    first = next(iter(splits.values()))[0]
    x_rows = torch.empty((store.manifest.num_rows, *first.shape[1:]), dtype=first.dtype)
    y_rows = torch.full((store.manifest.num_rows,), -1, dtype=torch.int64)
    for name, (x, _) in splits.items():
        sel = split == name
        ids = sid[sel]
        if len(ids) and (ids.min() < 0 or ids.max() >= len(x)):
            raise StoreError(f"{store.path}/samples.parquet: split {name!r}: sample_id outside 0..{len(x) - 1}")
        x_rows[torch.from_numpy(row[sel])] = x[torch.from_numpy(ids)]
    y_rows[torch.from_numpy(row)] = torch.from_numpy(lab)
    return x_rows, y_rows


def kd_batches(stream, x_rows: torch.Tensor, y_rows: torch.Tensor, store: CacheStore) -> Iterator[Batch]:
    """Stream batches (numpy, store order) -> training batches with inputs and Targets."""
    m = store.manifest
    for b in stream:
        rows = torch.from_numpy(b["row"])
        t = Targets(
            values=torch.from_numpy(b["topk_logits"]).float(),
            indices=torch.from_numpy(b["topk_indices"]).long(),
            lse=torch.from_numpy(b["lse"]),
            temperatures=tuple(m.temperatures),
            num_classes=m.num_classes,
            features={k.split("/", 1)[1]: torch.from_numpy(v).float() for k, v in b.items() if k.startswith("features/")},
        )
        yield {"x": x_rows[rows], "y": y_rows[rows], "targets": t}


class FeatureProjector(nn.Module):
    """Learned linear map P from the student's feature to the cached teacher feature (flattened)."""

    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__()
        self.proj = nn.Linear(student_dim, teacher_dim)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.proj(f.flatten(1))


def kd_step(student: nn.Module, cfg: DistillConfig, store: CacheStore, sample_x: torch.Tensor):
    """-> (step_loss(batch), extra trainable params). Feature loss: beta * MSE(P(student feat), teacher feat)."""
    feat = cfg.feature
    projector = None
    if feat is not None:
        with torch.no_grad(), capture(student, {"student_module": feat.student_module}, "distill.feature", "student") as out:
            student(sample_x[:2])
        s_dim = out["student_module"][0].numel()
        t_dim = int(np.prod(store.manifest.features[feat.cached].shape))
        projector = FeatureProjector(s_dim, t_dim)

    def step(batch: Batch):
        t = batch["targets"]
        if projector is None:
            logits = student(batch["x"])
            return kd_loss(logits, batch["y"], t, cfg.temperature, cfg.alpha)
        with capture(student, {"student_module": feat.student_module}, "distill.feature", "student") as out:
            logits = student(batch["x"])
        loss, parts = kd_loss(logits, batch["y"], t, cfg.temperature, cfg.alpha)
        mse = F.mse_loss(projector(out["student_module"]), t.features[feat.cached].flatten(1))
        parts["feature_mse"] = float(mse.detach())
        return loss + feat.beta * mse, parts

    return step, (list(projector.parameters()) if projector is not None else [])


def ce_step(model: nn.Module):
    def step(batch: Batch):
        return F.cross_entropy(model(batch["x"]), batch["y"]), {}

    return step
