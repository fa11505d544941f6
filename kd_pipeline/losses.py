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


# Up to this many classes the student's tail mass is taken exactly (a logsumexp over the classes not stored, one
# more pass over [B, C]: nothing next to a step on 10-1000 classes); above it, from the stored ids' mass
# (_log_tail), which avoids that second pass on LM vocabularies.
EXACT_TAIL_MAX_CLASSES = 4096


@torch.no_grad()
def teacher_terms(values: torch.Tensor, lse: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's side of the top-k + tail KL at tau, which no gradient flows through: values [B, k] (relative
    or raw logits), lse [B, 1] logsumexp at tau -> p [B, k + 1] (the stored ids' probabilities, then the tail
    mass m = 1 - sum p_i, >= 0) and sum p log p over those k + 1 buckets [B] (float32). The student stream
    computes these once per block (stream.BlockStream `kl_tau`)."""
    log_p = values.float() / tau - lse.float()
    p = log_p.exp()
    tail = (1.0 - p.sum(dim=1, keepdim=True)).clamp(min=0.0)
    return torch.cat([p, tail], dim=1), (p * log_p).sum(dim=1) + torch.xlogy(tail, tail)[:, 0]


def sparse_kl(student_logits: torch.Tensor, t: Targets, tau: float) -> torch.Tensor:
    """student_logits [B, C] -> per-row KL(p_T || p_S) at tau, [B], from top-k + tail:
    sum over the k + 1 buckets of p (log p - log q), with the teacher's terms from `teacher_terms` (computed
    with the batch when the stream made them at this tau). Branch-free up to EXACT_TAIL_MAX_CLASSES classes."""
    ti = temperature_index(t.temperatures, tau)
    if t.kl_p is not None and t.kl_tau == tau:
        p, plogp = t.kl_p, t.kl_plogp
    else:
        p, plogp = teacher_terms(t.values, t.lse[:, ti : ti + 1], tau)
    s = student_logits.float()
    if t.k == t.num_classes:  # no tail (its rounding residue is taken out of plogp): the dense KL
        log_q = torch.log_softmax(s if tau == 1.0 else s / tau, dim=1).gather(1, t.indices)
        return plogp - torch.xlogy(p[:, -1], p[:, -1]) - (p[:, :-1] * log_q).sum(dim=1)
    if t.num_classes <= EXACT_TAIL_MAX_CLASSES:
        return TopkTailKL.apply(s, tau, t.indices, p, plogp)
    s = s if tau == 1.0 else s / tau
    log_q_all = torch.log_softmax(s, dim=1)  # [B, C]: the one pass over all classes
    log_q = log_q_all.gather(1, t.indices)  # [B, k]
    return plogp - (p[:, :-1] * log_q).sum(dim=1) - p[:, -1] * _log_tail(log_q_all, log_q, t.indices)


class TopkTailKL(torch.autograd.Function):
    """The top-k + tail KL per row [B] with its gradient written out: a handful of ops forward and backward
    where autograd of the same maths takes ~40 on a small student (docs/benchmarks.md "Cached-KD step").
    apply(s [B, C] student logits, tau, indices [B, k], p [B, k + 1], plogp [B]) (p, plogp: teacher_terms).
    Forward, with log q = log_softmax(s / tau): KL = sum p log p - sum_i p_i log q_i - p_tail log q_tail,
    q_tail = the student's mass on the classes not stored (a logsumexp over them: exact).
    Backward: dKL/ds_j = (q_j - r_j) / tau, r = the teacher's mass spread as the KL sees it: p_i on a stored
    id, p_tail * q_j / q_tail on any other class (the tail bucket's share of its mass)."""

    @staticmethod
    def forward(ctx, s, tau, indices, p, plogp):
        log_q = torch.log_softmax(s if tau == 1.0 else s / tau, dim=1)
        others = log_q.scatter(1, indices, float("-inf"))  # the classes not stored
        log_tail = torch.logsumexp(others, dim=1, keepdim=True)
        kl = plogp - (p * torch.cat([log_q.gather(1, indices), log_tail], dim=1)).sum(dim=1)
        ctx.save_for_backward(log_q, others, log_tail, indices, p)
        ctx.tau = tau
        return kl

    @staticmethod
    def backward(ctx, grad):
        log_q, others, log_tail, indices, p = ctx.saved_tensors
        k = indices.shape[1]
        # exp(log q_j - log q_tail) <= 1 on the other classes (0 on the stored ids, then replaced by p_i)
        r = (others - log_tail).exp_().mul_(p[:, k:]).scatter_(1, indices, p[:, :k])
        return (log_q.exp() - r).mul_((grad if ctx.tau == 1.0 else grad / ctx.tau)[:, None]), None, None, None, None


def _log_tail(log_q_all: torch.Tensor, log_q: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """log of the student's mass on the classes not stored, [B], for vocabularies above EXACT_TAIL_MAX_CLASSES.
    1 - sum(q_k) in float64 is exact to ~1e-7, i.e. to 1e-4 relative where the tail is >= 1e-3; rows with a
    smaller tail take the exact (C-wide) logsumexp. On LM vocabularies this avoids a second pass over [B, C]
    (measured 2x the CE step's cost)."""
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
    loss = torch.add(ce * alpha, kl, alpha=(1.0 - alpha) * tau * tau)  # one op fewer than a * ce + b * kl
    return loss, {"ce": ce.detach(), "kl": kl.detach()}
