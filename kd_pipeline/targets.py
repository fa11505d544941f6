"""Teacher targets, one object whether they come from the store or from a live teacher (online KD).

At cache time `topk_targets` runs on the teacher's device: the (B, C) logits never leave it, only the
(B, k) top-k and the (B, T) log-normalisers do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Targets:
    values: torch.Tensor  # [B, k] raw teacher logits (before temperature), sorted descending
    indices: torch.Tensor  # [B, k] int64 class ids of `values`
    lse: torch.Tensor  # [B, T] float32 logsumexp(z / tau_t) over ALL classes, for each declared tau
    temperatures: tuple[float, ...]  # the T declared temperatures, in `lse` column order
    num_classes: int
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [B, ...]
    # sampled targets only: [B, k] how often each id was drawn (0 = padding) from softmax(z / temperatures[0])
    counts: torch.Tensor | None = None

    @property
    def k(self) -> int:
        return self.values.shape[1]


@torch.no_grad()
def topk_targets(logits: torch.Tensor, k: int, temperatures: tuple[float, ...]) -> Targets:
    """logits [B, C] (any float dtype, any device) -> Targets on the same device, float32 maths."""
    z = logits.float()
    values, indices = torch.topk(z, k, dim=1, sorted=True)
    taus = torch.tensor(temperatures, dtype=torch.float32, device=z.device)
    lse = torch.logsumexp(z[:, None, :] / taus[None, :, None], dim=2)  # [B, T]
    return Targets(values, indices, lse, tuple(temperatures), z.shape[1])


def full_targets(logits: torch.Tensor, temperatures: tuple[float, ...]) -> Targets:
    """All classes kept (k = C): the live-teacher reference path, no truncation."""
    return topk_targets(logits, logits.shape[1], temperatures)
