"""Cross-tokenizer distillation from the store: the Universal Logit Distillation loss.

Source: N. Boizard, K. El Haddad, C. Hudelot, P. Colombo, "Towards Cross-Tokenizer Distillation: the Universal
Logit Distillation Loss for LLMs", 2024 (arXiv:2402.12030). When teacher and student have different
vocabularies no id of one means anything to the other, so ULD compares the two next-token distributions as
*sorted* probability vectors: with uniform transport cost, the Wasserstein-1 distance between them has the
closed form sum_i |p_(i) - q_(i)| (p_(1) >= p_(2) >= ..., the shorter vocabulary padded with zeros). It needs
no shared ids, only each distribution's values, which is why the store's top-k suffice.

The tail (our treatment; the paper has full logits): the store keeps the teacher's k largest probabilities
and the exact tail mass m_T = 1 - sum_k p (kd_pipeline/targets.py). Its sorted vector beyond rank k is unknown
except for its sum, so ranks > k are compared as one bucket, as the KL's tail bucket does:
    ULD_k = sum_{i<=k} |p_(i) - q_(i)| + |m_T - m_S|,   m_S = 1 - sum_{i<=k} q_(i)
where q_(i) are the student's k largest probabilities (zeros past its vocabulary). By the triangle inequality
ULD_k <= ULD (the full distance) and they are equal when k covers the teacher's vocabulary; ULD_k is in [0, 2].

Alignment (ours, not the paper's, which pairs the i-th answer tokens of the two sequences): a teacher row and
a student position are paired when their input tokens end at the same character of the same text (the
store's `char_end` and the student's own offsets, both relative to the sample's first character): both
models have then read exactly that text and predict what follows. Of several tokens ending at one character
(a character split over byte tokens) the last is used. Rows without a partner carry no ULD term.

loss = alpha * CE(student's own next tokens) + (1 - alpha) * mean ULD_k over the paired rows (rows with the
teacher's loss mask only, for conversations). No tau^2 factor: ULD is not a KL, its gradient does not shrink
as 1/tau^2.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import DistillConfig
from .losses import masked_ce, temperature_index
from .targets import Targets


def uld_distance(student_logits: torch.Tensor, t: Targets, tau: float) -> torch.Tensor:
    """student_logits [n, Vs] (any Vs), t: the paired teacher rows' top-k targets (values descending) ->
    ULD_k per row [n] (see the module doc), at temperature tau (one the store declared)."""
    ti = temperature_index(t.temperatures, tau)
    p = (t.values.float() / tau - t.lse[:, ti : ti + 1]).exp()  # [n, k] descending
    q = torch.softmax(student_logits.float() / tau, dim=1)
    k = p.shape[1]
    q_top = torch.topk(q, min(k, q.shape[1]), dim=1, sorted=True).values
    if q_top.shape[1] < k:  # a student vocabulary smaller than k: its sorted vector ends in zeros
        q_top = torch.nn.functional.pad(q_top, (0, k - q_top.shape[1]))
    tail_p = (1.0 - p.sum(dim=1)).clamp(min=0.0)
    tail_q = (1.0 - q_top.sum(dim=1)).clamp(min=0.0)
    return (p - q_top).abs().sum(dim=1) + (tail_p - tail_q).abs()


def _ends(chars: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T] token end offsets, real positions -> [B, T] bool: the last token ending at its character."""
    nxt = torch.full_like(chars, -1)
    nxt[:, :-1] = torch.where(mask[:, 1:], chars[:, 1:], -1)
    return mask & (nxt != chars)


def align(t_chars: torch.Tensor, t_mask: torch.Tensor, s_chars: torch.Tensor, s_mask: torch.Tensor,
          t_keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs of (teacher row, student row) whose input tokens end at the same character of the same sample.
    t_chars/t_mask [B, Tt], s_chars/s_mask [B, Ts]: end offsets and real positions; t_keep [B, Tt]: teacher
    rows that may be paired (loss mask). -> (teacher row indices, student row indices) [p] each, into the rows
    of `mask` in row-major order (what `kind.rows` returns)."""
    t_ok = _ends(t_chars, t_mask) & (t_keep if t_keep is not None else True)
    s_ok = _ends(s_chars, s_mask)
    span = int(max(int(t_chars.max()), int(s_chars.max()))) + 1
    t_key = torch.arange(len(t_chars))[:, None] * span + t_chars  # [B, Tt] sample and character, one number
    s_key = torch.arange(len(s_chars))[:, None] * span + s_chars
    t_row = t_mask.flatten().cumsum(0) - 1  # position -> index among the real rows
    s_row = s_mask.flatten().cumsum(0) - 1
    tk, tpos = t_key.flatten()[t_ok.flatten()], t_ok.flatten().nonzero()[:, 0]
    sk, spos = s_key.flatten()[s_ok.flatten()], s_ok.flatten().nonzero()[:, 0]
    sk, order = sk.sort()
    spos = spos[order]
    at = torch.searchsorted(sk, tk).clamp(max=max(len(sk) - 1, 0))
    hit = (sk[at] == tk) if len(sk) else torch.zeros_like(tk, dtype=torch.bool)
    return t_row[tpos[hit]], s_row[spos[at[hit]]]


class CrossTokenizerKD(nn.Module):
    """alpha * CE + (1 - alpha) * ULD_k for a student with its own tokenizer (module doc). The batch holds the
    student's tokens (x, y, mask, chars[, loss_mask]) and the store's rows of the same samples: targets, t_mask,
    t_chars[, t_loss_mask] (kd_pipeline/stream.py)."""

    def __init__(self, student: nn.Module, kind, cfg: DistillConfig):
        super().__init__()
        self.student, self.kind, self.cfg = student, kind, cfg

    def forward(self, batch: dict):
        cfg, t = self.cfg, batch["targets"]
        rows = self.kind.rows(self.student(batch["x"]), batch)
        ce = masked_ce(rows, self.kind.row_labels(batch))
        ti, si = align(batch["t_chars"].cpu(), batch["t_mask"].cpu(), batch["chars"].cpu(), batch["mask"].cpu(),
                       batch["t_loss_mask"].cpu() if "t_loss_mask" in batch else None)
        dev = rows.device
        ti, si = ti.to(dev), si.to(dev)
        paired = Targets(t.values[ti], t.indices[ti], t.lse[ti], t.temperatures, t.num_classes)
        d = uld_distance(rows[si], paired, cfg.temperature)
        uld = d.mean() if len(d) else rows.sum() * 0.0
        loss = cfg.alpha * ce + (1.0 - cfg.alpha) * uld
        return loss, {"ce": ce.detach(), "uld": uld.detach(), "aligned": torch.tensor(len(ti) / max(1, len(t.values)), device=dev)}
