"""Per-token teacher targets for a sequence store, computed on the teacher's device from (N, V) logits.

Values are relative to each row's top logit (docs/store-format-sequence.md): rel = z - max(z) <= 0, and
lse[:, t] = logsumexp(rel / tau_t) >= 0, so exp(rel_i / tau - lse) is the exact teacher probability.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def relative_logits(logits: torch.Tensor, temperatures: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (N, V) -> rel (N, V) float32, lse (N, T) float32."""
    z = logits.float()
    rel = z - z.amax(dim=1, keepdim=True)
    # rel <= 0 with a 0 in every row, so sum(exp) is in [1, V]: no max-shift needed (2 fewer passes over V)
    lse = torch.stack([(rel if t == 1.0 else rel / t).exp().sum(dim=1).log() for t in temperatures], dim=1)
    return rel, lse


@torch.no_grad()
def topk_rows(rel: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> values (N, k) descending, ids (N, k) int64."""
    return torch.topk(rel, k, dim=1, sorted=True)


@torch.no_grad()
def sampled_rows(rel: torch.Tensor, draws: int, tau: float, generator: torch.Generator | None = None):
    """Random-sampling KD targets: m = `draws` ids per row drawn with replacement from softmax(rel / tau),
    kept once each with their counts. Width w = min(m, V); rows with fewer distinct ids are padded with
    count 0 (pad id = the row's first id, pad value = the row's smallest stored value).
    -> values (N, w) descending, ids (N, w) int64, counts (N, w) int64 summing to m per row."""
    N, V = rel.shape
    w = min(draws, V)
    probs = torch.softmax(rel / tau, dim=1)
    drawn = torch.multinomial(probs, draws, replacement=True, generator=generator).sort(dim=1).values  # (N, m)
    first = torch.ones_like(drawn, dtype=torch.bool)
    first[:, 1:] = drawn[:, 1:] != drawn[:, :-1]
    slot = first.long().cumsum(dim=1) - 1  # (N, m) which distinct id each draw is, 0..w-1
    counts = torch.zeros(N, w, dtype=torch.long, device=rel.device).scatter_add_(1, slot, torch.ones_like(slot))
    ids = torch.zeros(N, w, dtype=torch.long, device=rel.device).scatter_(1, slot, drawn)
    used = counts > 0
    vals = rel.gather(1, ids).masked_fill(~used, float("-inf"))
    vals, order = vals.sort(dim=1, descending=True)  # padding (-inf) goes last
    ids, counts, used = ids.gather(1, order), counts.gather(1, order), used.gather(1, order)
    n_used = used.sum(dim=1, keepdim=True)
    last = vals.gather(1, n_used - 1)  # the row's smallest real value
    vals = torch.where(used, vals, last)
    ids = torch.where(used, ids, ids[:, :1])
    return vals, ids, counts
