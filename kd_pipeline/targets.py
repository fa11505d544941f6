"""Teacher targets, one object whether they come from the store or from a live teacher (online KD).

At cache time `teacher_rows` runs on the teacher's device: the (n, C) logits never leave it, only the (n, k)
values and ids and the (n, T) log-normalisers do. Values are relative to each row's top logit:
rel = z - max(z) <= 0 and lse[:, t] = logsumexp(rel / tau_t) >= 0, so exp(rel_i / tau - lse) is the exact
teacher probability whatever the logits' offset or scale (raw float16 logits of 1000 lose the tail; see
docs/store-format.md "Values").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Targets:
    values: torch.Tensor  # [B, k] teacher logits before temperature (raw, or relative to the row's top), descending
    indices: torch.Tensor  # [B, k] int64 class ids of `values`
    lse: torch.Tensor  # [B, T] float32 logsumexp(values' scale / tau_t) over ALL classes, for each declared tau
    temperatures: tuple[float, ...]  # the T declared temperatures, in `lse` column order
    num_classes: int
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [B, ...]
    # sampled targets only: [B, k] how often each id was drawn (0 = padding) from softmax(z / temperatures[0])
    counts: torch.Tensor | None = None
    # the teacher's side of the KL at kl_tau (losses.teacher_terms), when the stream computed it with the block:
    kl_p: torch.Tensor | None = None  # [B, k + 1] probabilities of the stored ids, then the tail mass
    kl_plogp: torch.Tensor | None = None  # [B] sum of p log p over those k + 1 buckets
    kl_tau: float | None = None

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


@torch.no_grad()
def relative_logits(logits: torch.Tensor, temperatures: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (n, C) -> rel (n, C) float32 (each row's top is 0), lse (n, T) float32."""
    z = logits.float()
    rel = z - z.amax(dim=1, keepdim=True)
    # rel <= 0 with a 0 in every row, so sum(exp) is in [1, C]: no max-shift needed (2 fewer passes over C)
    lse = torch.stack([(rel if t == 1.0 else rel / t).exp().sum(dim=1).log() for t in temperatures], dim=1)
    return rel, lse


@torch.no_grad()
def sampled_rows(rel: torch.Tensor, draws: int, tau: float, generator: torch.Generator | None = None):
    """Random-sampling KD targets: m = `draws` ids per row drawn with replacement from softmax(rel / tau),
    kept once each with their counts. Width w = min(m, C); rows with fewer distinct ids are padded with
    count 0 (pad id = the row's first id, pad value = the row's smallest stored value).
    -> values (n, w) descending, ids (n, w) int64, counts (n, w) int64 summing to m per row."""
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


@torch.no_grad()
def teacher_rows(logits: torch.Tensor, m, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """(n, C) teacher logits -> the targets a store row keeps, on the logits' device: values (n, k) relative
    to the top, ids (n, k) int64, lse (n, T)[, counts (n, k) for sampled targets]. m: the store's Manifest."""
    rel, lse = relative_logits(logits, tuple(m.temperatures))
    if m.targets == "sampled":
        v, i, c = sampled_rows(rel, m.sample_draws, m.sample_temperature, generator)
        return {"values": v, "ids": i, "lse": lse, "counts": c}
    v, i = torch.topk(rel, m.top_k, dim=1, sorted=True)
    return {"values": v, "ids": i, "lse": lse}


def targets_from_arrays(a: dict[str, np.ndarray], m, kl_tau: float | None = None) -> Targets:
    """A store block's (or some rows' of it) arrays -> Targets: values decoded to float32, ids int64, features
    float32. m: the store's Manifest. Ids and values already decoded (the stream decodes them once per block)
    come as "ids" and "values", and arrays already of their dtype are not copied; "kl_p" and "kl_plogp", the
    teacher's terms of the KL at kl_tau (losses.teacher_terms), become the Targets' own."""
    from .store.ids import decode_ids
    from .store.values import decode_values

    return Targets(
        values=torch.from_numpy(a["values"] if "values" in a else decode_values(a, m.values_scheme)),
        indices=torch.from_numpy((a["ids"] if "ids" in a else decode_ids(a, m)).astype(np.int64, copy=False)),
        lse=torch.from_numpy(np.ascontiguousarray(a["lse"], dtype=np.float32)),
        temperatures=tuple(m.temperatures),
        num_classes=m.num_classes,
        features={k.split("/", 1)[1]: torch.from_numpy(v.astype(np.float32, copy=False)) for k, v in a.items() if k.startswith("features/")},
        counts=torch.from_numpy(a["sample_counts"].astype(np.int64, copy=False)) if "sample_counts" in a else None,
        **({"kl_p": torch.from_numpy(a["kl_p"]), "kl_plogp": torch.from_numpy(a["kl_plogp"]), "kl_tau": kl_tau} if "kl_p" in a else {}),
    )


def through_store(logits: torch.Tensor, m, generator: torch.Generator | None = None) -> Targets:
    """(n, C) teacher logits -> Targets exactly as a store with manifest m reads them back: teacher_rows,
    encode to the store's dtypes, host copy, decode (tests, the reconstruction KL, benchmarks)."""
    from .store.values import encode_targets, to_host

    return targets_from_arrays(to_host(encode_targets(teacher_rows(logits, m, generator), m), m), m)
