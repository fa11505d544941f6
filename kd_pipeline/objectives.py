"""Training objectives as loss modules: `forward(batch) -> (loss, parts)`, the same for both kinds.

A loss module owns everything it trains (the model, and e.g. the feature projector), so `training.fit` can
wrap it in DistributedDataParallel as one unit. The model's output goes through `kind.rows` first: every loss
here reads (n, C) rows and (n,) labels, whether a row is a sample or a token.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import DistillConfig
from .hooks import capture
from .losses import kd_loss, masked_ce


class HardLabels(nn.Module):
    """Cross-entropy on the hard labels (the teacher's training and the baseline student's)."""

    def __init__(self, model: nn.Module, kind):
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, batch: dict):
        rows = self.kind.rows(self.model(batch["x"]), batch)
        ce = masked_ce(rows, self.kind.row_labels(batch))
        return ce, {}


class FeatureProjector(nn.Module):
    """Learned linear map P from the student's feature to the cached teacher feature (flattened)."""

    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__()
        self.proj = nn.Linear(student_dim, teacher_dim)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.proj(f.flatten(1))


class CachedKD(nn.Module):
    """alpha * CE(y, s) + (1 - alpha) * tau^2 * KL(store targets || student) [+ beta * MSE(P(student feature),
    cached teacher feature)], from the batch's `targets` (kd_pipeline/losses.py)."""

    def __init__(self, student: nn.Module, kind, cfg: DistillConfig, teacher_features: dict, probe: dict | None = None):
        """teacher_features: the store manifest's features (name -> FeatureInfo); probe: a batch to size the
        feature projector with (needed only with cfg.feature)."""
        super().__init__()
        self.student, self.kind, self.cfg = student, kind, cfg
        self.projector = None
        feat = cfg.feature
        if feat is not None:
            with torch.no_grad(), capture(student, {"f": feat.student_module}, "distill.feature.student_module") as out:
                student(probe["x"])
            s_dim = int(np.prod(self.kind.rows(out["f"], probe).shape[1:]))
            self.projector = FeatureProjector(s_dim, int(np.prod(teacher_features[feat.cached].shape)))

    def forward(self, batch: dict):
        t, cfg = batch["targets"], self.cfg
        keep = self.kind.row_loss_mask(batch)
        if keep is not None:
            keep = keep.to(t.values.device)
        if self.projector is None:
            rows = self.kind.rows(self.student(batch["x"]), batch)
            return kd_loss(rows, self.kind.row_labels(batch), t, cfg.temperature, cfg.alpha, keep)
        with capture(self.student, {"f": cfg.feature.student_module}, "distill.feature.student_module") as out:
            rows = self.kind.rows(self.student(batch["x"]), batch)
        loss, parts = kd_loss(rows, self.kind.row_labels(batch), t, cfg.temperature, cfg.alpha, keep)
        mse = F.mse_loss(self.projector(self.kind.rows(out["f"], batch)), t.features[cfg.feature.cached].flatten(1))
        parts["feature_mse"] = mse.detach()
        return loss + cfg.feature.beta * mse, parts
