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
from .mutual import mutual_kl
from .relation import rkd_angle, rkd_distance
from .targets import Targets, full_targets


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
    cached teacher feature)] [+ w_dist * RKD-D + w_angle * RKD-A between a student module's output and a cached
    teacher feature], from the batch's `targets` (kd_pipeline/losses.py, kd_pipeline/relation.py)."""

    def __init__(self, student: nn.Module, kind, cfg: DistillConfig, teacher_features: dict, probe: dict | None = None):
        """teacher_features: the store manifest's features (name -> FeatureInfo); probe: a batch to size the
        feature projector with (needed only with cfg.feature)."""
        super().__init__()
        self.student, self.kind, self.cfg = student, kind, cfg
        self.projector = None
        # student modules whose outputs the loss reads, keyed by the config key that names them
        self.hooks = {f"{k}.student_module": v.student_module for k, v in (("feature", cfg.feature), ("relation", cfg.relation)) if v is not None}
        feat = cfg.feature
        if feat is not None:
            with torch.no_grad(), capture(student, {"student_module": feat.student_module}, "distill.feature", "student") as out:
                student(probe["x"])
            s_dim = int(np.prod(self.kind.rows(out["student_module"], probe).shape[1:]))
            self.projector = FeatureProjector(s_dim, int(np.prod(teacher_features[feat.cached].shape)))

    def forward(self, batch: dict):
        t, cfg = batch["targets"], self.cfg
        keep = self.kind.row_loss_mask(batch)  # chat data: rows outside assistant turns carry no loss at all
        if keep is not None:
            keep = keep.to(t.values.device)
        with capture(self.student, self.hooks, "distill", "student") as out:
            rows = self.kind.rows(self.student(batch["x"]), batch)
        loss, parts = kd_loss(rows, self.kind.row_labels(batch), t, cfg.temperature, cfg.alpha, keep)
        if cfg.feature is not None:
            f = self.kind.rows(out["feature.student_module"], batch)
            mse = F.mse_loss(self.projector(f), t.features[cfg.feature.cached].flatten(1))
            parts["feature_mse"] = mse.detach()
            loss = loss + cfg.feature.beta * mse
        if cfg.relation is not None:
            r = cfg.relation
            s_emb = self.kind.rows(out["relation.student_module"], batch).flatten(1).float()
            t_emb = t.features[r.cached].flatten(1).float()
            for key, w, term in (("rkd_dist", r.w_dist, rkd_distance), ("rkd_angle", r.w_angle, rkd_angle)):
                if w:  # the angle term costs B^3: skipped at weight 0
                    v = term(s_emb, t_emb)
                    parts[key] = v.detach()
                    loss = loss + w * v
        return loss, parts


class LiveTeacher:
    """The frozen teacher as a source of Targets for online KD: its full logits (k = C: no truncation) at the
    student's temperature, and its cached-feature modules' outputs, computed on each batch."""

    def __init__(self, teacher: nn.Module, kind, temperature: float, features: dict[str, str]):
        self.teacher, self.kind, self.temperatures, self.features = teacher, kind, (temperature,), features

    @torch.no_grad()
    def targets(self, batch: dict) -> Targets:
        with capture(self.teacher, self.features, "cache.features", "teacher") as out:
            z = self.kind.rows(self.teacher(batch["x"]), batch)
        t = full_targets(z, self.temperatures)
        t.features = {n: self.kind.rows(out[n], batch) for n in self.features}
        return t


class OnlineKD(CachedKD):
    """CachedKD with the targets of a live teacher, computed every step (`distill.mode: online`): the same loss
    on the full teacher distribution, the reference the cache approximates. The teacher is a frozen submodule
    (moved with the student, no gradients, always in eval mode)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, kind, cfg: DistillConfig, features: dict[str, str], teacher_features: dict, probe: dict | None = None):
        super().__init__(student, kind, cfg, teacher_features, probe)
        self.teacher = teacher.eval().requires_grad_(False)
        self.live = LiveTeacher(self.teacher, kind, cfg.temperature, features)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, batch: dict):
        return super().forward({**batch, "targets": self.live.targets(batch)})


class MutualLearning(nn.Module):
    """Deep mutual learning of two students (Zhang et al. 2018, kd_pipeline/mutual.py), `distill.mode: mutual`:
    L = L_1 + L_2, L_k = CE(y, z_k) + KL(p_peer || p_k) with the peer detached, so one backward gives each
    student the gradient of its own loss and one optimizer step updates both together (the simultaneous
    variant; the paper's Algorithm 1 updates them in turn, recomputing the peer's prediction in between)."""

    def __init__(self, a: nn.Module, b: nn.Module, kind):
        super().__init__()
        self.students, self.kind = nn.ModuleList([a, b]), kind

    def forward(self, batch: dict):
        z = [self.kind.rows(m(batch["x"]), batch) for m in self.students]
        y = self.kind.row_labels(batch)
        loss, parts = 0.0, {}
        for k, name in enumerate(("a", "b")):
            ce, kl = masked_ce(z[k], y), mutual_kl(z[k], z[1 - k]).mean()
            parts[f"ce_{name}"], parts[f"kl_{name}"] = ce.detach(), kl.detach()
            loss = loss + ce + kl
        return loss, parts
