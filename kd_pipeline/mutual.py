"""Deep mutual learning (Zhang, Xiang, Hospedales, Lu, "Deep Mutual Learning", CVPR 2018, arXiv 1706.00384).

No fixed teacher: a cohort of students trains together, each on its labels and on the others' current
predictions (Sec. 3.1). For network 1 of two, with p_k = softmax(z_k) (no temperature in the paper):
    L_Theta1 = L_C1 + D_KL(p2 || p1),   L_C1 = -sum_i log p1^{y_i}(x_i),
    D_KL(p2 || p1) = sum_i sum_m p2^m(x_i) log(p2^m(x_i) / p1^m(x_i))
and symmetrically L_Theta2 = L_C2 + D_KL(p1 || p2). With K students (Sec. 3.3) each takes the mean KL to
its K - 1 peers: L_Theta_k = L_Ck + 1/(K-1) sum_{l != k} D_KL(p_l || p_k).
The peers' predictions are targets, not paths for gradients: they are detached here, so one backward of
L_Theta_k updates network k only. The paper updates the networks in turn within a step (Algorithm 1:
network 2's target p1 is recomputed after network 1's update); that ordering is the training loop's job.
Sums over the batch are taken as means (the CE of torch, and the KL divided by B), as kd_loss does.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def mutual_kl(logits: torch.Tensor, peer_logits: torch.Tensor) -> torch.Tensor:
    """D_KL(p_peer || p_self) per row, [B]; logits, peer_logits [B, C]. No gradient reaches the peer."""
    log_q = F.log_softmax(logits.float(), dim=1)
    log_p = F.log_softmax(peer_logits.detach().float(), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def dml_loss(logits: torch.Tensor, peers: Sequence[torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """One student's DML loss: CE(y, z) + mean over peers of KL(p_peer || p_self), batch means.

    logits: [B, C] this student's; peers: the other students' [B, C] logits on the same batch (one for the
    paper's two-network case); labels: [B] int64, -1 = unlabelled (the CE leaves those rows out, the KL
    keeps them). Returns (scalar loss, {"ce", "kl"}). Raises ValueError without peers."""
    if len(peers) == 0:
        raise ValueError("dml_loss: needs at least one peer")
    labelled = labels >= 0
    if labelled.any():
        ce = F.cross_entropy(logits.float(), torch.where(labelled, labels, -1), ignore_index=-1)
    else:
        ce = logits.sum() * 0.0
    kl = torch.stack([mutual_kl(logits, p).mean() for p in peers]).mean()
    return ce + kl, {"ce": float(ce.detach()), "kl": float(kl.detach())}
