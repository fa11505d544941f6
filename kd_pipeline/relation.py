"""Relation-based KD: RKD (Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019, arXiv 1904.05068).

Instead of matching each sample's output, the student matches the *structure* of the batch in the teacher's
embedding space: pairwise distances (RKD-D, Sec. 3.2.1) and the angles of triplets (RKD-A, Sec. 3.2.2).
With t_i the teacher's and s_i the student's embedding of sample i:

    psi_D(t_i, t_j) = ||t_i - t_j||_2 / mu,   mu = mean over pairs (i, j) of ||t_i - t_j||_2        (Eqs. 3, 4)
    L_RKD-D = sum over pairs of l_delta(psi_D(t_i, t_j), psi_D(s_i, s_j))                          (Eq. 5)
    psi_A(t_i, t_j, t_k) = cos angle t_i t_j t_k = <e_ij, e_kj>,  e_ij = (t_i - t_j) / ||t_i - t_j||_2  (Eq. 7)
    L_RKD-A = sum over triplets of l_delta(psi_A(t_i, t_j, t_k), psi_A(s_i, s_j, s_k))             (Eq. 8)
    l_delta(x, y) = (x - y)^2 / 2 if |x - y| <= 1, else |x - y| - 1/2   (Huber, Eq. 6 = smooth-L1, beta 1)

Pairs and triplets are the paper's chi^2 and chi^3: tuples of *distinct* samples of the batch (i != j;
i, j, k pairwise distinct), ordered. We average over them instead of summing, so the weights do not depend
on the batch size. (The authors' code averages over all B^2 / B^3 index tuples, the degenerate ones being
0 on both sides: its values are ours times (B-1)/B for RKD-D and (B-1)(B-2)/B^2 for RKD-A.)

Distances and angles do not depend on the embedding's dimension, so the student's embedding is used as it
is: no projector, Ds and Dt may differ. Both terms are invariant to rotating, translating and (through mu,
and trivially for angles) scaling either embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rkd_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor, w_dist: float, w_angle: float) -> tuple[torch.Tensor, dict[str, float]]:
    """w_dist * RKD-D + w_angle * RKD-A between a batch's student and teacher embeddings.

    student_emb: [B, ...] (flattened to [B, Ds]); teacher_emb: [B, ...] (flattened to [B, Dt]), e.g. a cached
    teacher feature; the teacher side gets no gradient. Computed in float32. Cost: B^2 * D for distances,
    B^3 for angles (skipped when w_angle == 0). Returns (scalar loss, {"rkd_dist", "rkd_angle"} as floats).
    A pair of identical embeddings has no direction: its e_ij is taken as 0 (cos 0), as F.normalize does.
    Raises ValueError if the batch sizes differ, or B < 2 (distances) / B < 3 (angles) with a weight > 0.
    """
    s = student_emb.flatten(1).float()
    t = teacher_emb.detach().flatten(1).float()
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"rkd_loss: student batch {s.shape[0]} != teacher batch {t.shape[0]}")
    loss = s.new_zeros(())
    parts = {}
    if w_dist:
        d = rkd_distance(s, t)
        loss, parts["rkd_dist"] = loss + w_dist * d, float(d.detach())
    if w_angle:
        a = rkd_angle(s, t)
        loss, parts["rkd_angle"] = loss + w_angle * a, float(a.detach())
    return loss, parts


def rkd_distance(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """RKD-D (Eqs. 3-6), mean over the B(B-1) ordered pairs of distinct samples. s [B, Ds], t [B, Dt] -> []."""
    if s.shape[0] < 2:
        raise ValueError(f"rkd_loss: the distance term needs a batch of >= 2 samples, got {s.shape[0]}")
    return F.smooth_l1_loss(_normalised_distances(s), _normalised_distances(t), beta=1.0)


def rkd_angle(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """RKD-A (Eqs. 6-8), mean over the B(B-1)(B-2) ordered triplets of distinct samples. -> []."""
    b = s.shape[0]
    if b < 3:
        raise ValueError(f"rkd_loss: the angle term needs a batch of >= 3 samples, got {b}")
    idx = torch.arange(b, device=s.device)
    a, c, e = idx[:, None, None], idx[None, :, None], idx[None, None, :]
    distinct = (a != c) & (c != e) & (a != e)  # [B, B, B], symmetric in its three axes
    # Degenerate triplets have the same cosine on both sides (0 if a vertex repeats, 1 if i == k): their Huber
    # terms are 0, so a masked sum over the whole tensor is the mean over distinct ones without a gather.
    per = F.smooth_l1_loss(_cosines(s), _cosines(t), beta=1.0, reduction="none")
    return (per * distinct).sum() / distinct.sum()


def _gram(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (G = xc xc^T [B, B], squared distances [B, B]) of the batch centred on its mean (distances and angles
    do not change; centring keeps |x|^2 small against the distances, so the Gram identities below lose little
    to cancellation). O(B^2 D): never the [B, B, D] difference tensor."""
    xc = x - x.mean(dim=0, keepdim=True)
    g = xc @ xc.T
    sq = g.diagonal()
    return g, (sq[:, None] + sq[None, :] - 2.0 * g).clamp_min(0.0)


def _normalised_distances(x: torch.Tensor) -> torch.Tensor:
    """psi_D of every ordered pair i != j, [B(B-1)]. The diagonal is dropped *before* the square root, and a
    zero distance is clamped (1e-24 under the root): the root's gradient at 0 is undefined."""
    b = x.shape[0]
    off = ~torch.eye(b, dtype=torch.bool, device=x.device)
    d = _gram(x)[1][off].clamp_min(1e-24).sqrt()  # [B(B-1)]
    return d / d.mean().clamp_min(1e-12)  # mu: all points equal -> every psi_D is 0, not NaN


def _cosines(x: torch.Tensor) -> torch.Tensor:
    """cos[j, i, k] = <e_ij, e_kj>, the angle at vertex j, [B, B, B], from the Gram matrix in O(B^3):
    <x_i - x_j, x_k - x_j> = G_ik - G_ij - G_kj + G_jj, divided by both lengths. A zero-length edge
    (identical samples) has e = 0, as F.normalize gives."""
    g, d2 = _gram(x)
    inv = 1.0 / d2.clamp_min(1e-24).sqrt().clamp_min(1e-12)  # [j, i] = 1 / ||x_i - x_j||
    inv = torch.where(d2 > 0, inv, torch.zeros_like(inv))
    dots = g[None, :, :] - g[:, :, None] - g[:, None, :] + g.diagonal()[:, None, None]
    return dots * inv[:, :, None] * inv[:, None, :]
