"""Distillation losses computed from top-k targets with an exact tail bucket.

For temperature tau (one the store declared), teacher probabilities of the stored ids are exact:
    p_i = exp(z_i / tau - lse_tau),   tail m = 1 - sum_i p_i   (mass of the C - k classes not stored)
The KL is taken over the k stored classes plus one tail bucket, against the student's probabilities of the
same ids and its total mass on all other classes:
    KL = sum_i p_i (log p_i - log q_i) + m (log m - log q_tail)
With k = C it equals the dense KL; with k < C it is <= the dense KL (grouping classes never raises a KL).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import StoreError
from .targets import Targets


def find_temperature(temps, tau: float) -> int | None:
    """Index of tau among a store's temperatures (equal to 1e-6 relative), or None."""
    for i, t in enumerate(temps):
        if abs(t - tau) <= 1e-6 * max(1.0, abs(tau)):
            return i
    return None


def temperature_index(targets_temps: tuple[float, ...], tau: float) -> int:
    i = find_temperature(targets_temps, tau)
    if i is not None:
        return i
    raise StoreError(
        f"distill.temperature: {tau} is not one of the store's temperatures {list(targets_temps)}; "
        "re-run cache_teacher with it in cache.temperatures"
    )


def sparse_kl(student_logits: torch.Tensor, t: Targets, tau: float) -> torch.Tensor:
    """student_logits [B, C] -> per-row KL(p_T || p_S) at tau, [B], from top-k + tail."""
    ti = temperature_index(t.temperatures, tau)
    log_p = t.values.float() / tau - t.lse[:, ti : ti + 1]  # [B, k]
    p = log_p.exp()
    s = student_logits.float()
    log_q_all = torch.log_softmax(s if tau == 1.0 else s / tau, dim=1)  # [B, C]: the one pass over all classes
    log_q = log_q_all.gather(1, t.indices)  # [B, k]
    kl = (p * (log_p - log_q)).sum(dim=1)
    if t.k < t.num_classes:
        tail = (1.0 - p.sum(dim=1)).clamp(min=0.0)  # [B]
        kl = kl + torch.xlogy(tail, tail) - tail * _log_tail(log_q_all, log_q, t.indices)
    return kl


def _log_tail(log_q_all: torch.Tensor, log_q: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """log of the student's mass on the classes not stored, [B]. 1 - sum(q_k) in float64 is exact to ~1e-7,
    i.e. to 1e-4 relative where the tail is >= 1e-3; rows with a smaller tail take the exact (C-wide)
    logsumexp. On LM vocabularies this avoids a second pass over [B, C] (measured 2x the CE step's cost)."""
    rest = 1.0 - log_q.double().exp().sum(dim=1)
    small = rest < 1e-3
    out = rest.clamp(min=1e-3).log().float()
    if small.any():
        rows = small.nonzero()[:, 0]
        exact = torch.logsumexp(log_q_all[rows].scatter(1, indices[rows], float("-inf")), dim=1)
        out = out.index_put((rows,), exact)
    return out


def sampled_kl(student_logits: torch.Tensor, t: Targets, tau: float) -> torch.Tensor:
    """Random-sampling KD (Anshumann et al., ACL 2025): per-row unbiased estimate of KL(p_T || p_S) at tau, [B].

    The m ids of a row were drawn from p_s = softmax(z / tau_s), tau_s = temperatures[0]; c_i counts them.
    The paper's sparse target p_hat_i = (c_i / m) * w_i, w_i = p_tau(i) / p_s(i) (w = 1 when tau = tau_s),
    has E[p_hat_i] = p_tau(i) for every id, so
        sum_i p_hat_i (log p_tau(i) - log q_tau(i))
    is unbiased for the KL (its student-dependent part is the paper's CE(p_hat, q); the log p_tau term is a
    constant that makes the value a KL). Weights are exact (not self-normalised): the store holds lse."""
    ti = temperature_index(t.temperatures, tau)
    log_p = t.values.float() / tau - t.lse[:, ti : ti + 1]  # [B, k] log p_tau of the drawn ids
    log_ps = t.values.float() / t.temperatures[0] - t.lse[:, :1]  # [B, k] log p_s (the sampling law)
    m = t.counts.sum(dim=1, keepdim=True).float()
    p_hat = t.counts.float() / m * (log_p - log_ps).exp()
    log_q = torch.log_softmax(student_logits.float() / tau, dim=1).gather(1, t.indices)
    return (p_hat * (log_p - log_q)).sum(dim=1)


def dense_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """The seed formula's KL(softmax(t/tau) || softmax(s/tau)) per row, [B]."""
    log_p = F.log_softmax(teacher_logits.float() / tau, dim=1)
    log_q = F.log_softmax(student_logits.float() / tau, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def masked_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the rows with a label (label >= 0); 0 (with a gradient path) when none has one.
    Branch-free: no host sync to ask whether the batch holds a label."""
    labelled = labels >= 0
    ce = F.cross_entropy(logits, torch.where(labelled, labels, -1), ignore_index=-1, reduction="sum")
    return ce / labelled.sum().clamp(min=1)


def kd_loss(
    student_logits: torch.Tensor, labels: torch.Tensor, t: Targets, tau: float, alpha: float,
    row_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """alpha * CE(y, s) over labelled rows (label >= 0) + (1 - alpha) * tau^2 * KL over all rows, or over the
    rows of `row_mask` [n] bool (conversations: assistant tokens only; its other rows carry no loss at all).
    student_logits [n, C], labels [n] (-1 = none) -> (loss, {"ce", "kl"} detached tensors)."""
    ce = masked_ce(student_logits, labels)
    kl = (sparse_kl if t.counts is None else sampled_kl)(student_logits, t, tau)
    kl = kl.mean() if row_mask is None else (kl * row_mask).sum() / row_mask.sum().clamp(min=1)
    loss = alpha * ce + (1.0 - alpha) * tau * tau * kl
    return loss, {"ce": ce.detach(), "kl": kl.detach()}
