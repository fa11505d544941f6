"""How much of the teacher's distribution a store row keeps: KL(p_teacher || p_reconstructed), per row.

Two reconstructions from a row's stored ids, decoded values v (relative to the top logit) and lse at tau:
  stored ids get q_i = exp(v_i / tau - lse); the tail mass q_tail = 1 - sum_i q_i is either
  - one bucket (compression KL: the loss of the format itself, what the top-k + tail loss sees), or
  - spread evenly over the V - k' ids not stored (full KL: what a consumer of only the ids would see).
Rows may repeat ids as padding (sampled targets): `valid` marks the real ones.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def reconstruction_kl(logits: torch.Tensor, values: torch.Tensor, ids: torch.Tensor, lse: torch.Tensor, tau: float,
                      valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (N, V) full teacher logits; values (N, k) decoded; ids (N, k); lse (N,) at tau.
    -> (compression KL (N,), full KL (N,)) in nats."""
    N, V = logits.shape
    valid = torch.ones_like(ids, dtype=torch.bool) if valid is None else valid
    # float64: tails of 1e-7 are what is measured here, float32 round-off is of that size
    log_p = torch.log_softmax(logits.double() / tau, dim=1)  # (N, V)
    p = log_p.exp()
    log_q = values.double() / tau - lse.double()[:, None]  # (N, k)
    p_k = p.gather(1, ids) * valid
    log_p_k = log_p.gather(1, ids)
    q_k = log_q.exp() * valid
    k_used = valid.sum(1)
    has_tail = k_used < V
    p_tail = torch.where(has_tail, 1.0 - p_k.sum(1), 0.0).clamp(min=0.0)
    q_tail = (1.0 - q_k.sum(1)).clamp(min=torch.finfo(torch.float64).tiny)
    stored = (p_k * (log_p_k - log_q)).sum(1)
    compression = stored + torch.xlogy(p_tail, p_tail) - p_tail * q_tail.log()
    spread = (q_tail / (V - k_used).clamp(min=1)).log()  # (N,) log-prob given to each id not stored
    in_row = torch.zeros_like(p, dtype=torch.bool).scatter_(1, ids, valid)
    rest = torch.where(in_row, torch.zeros_like(p), p * (log_p - spread[:, None])).sum(1)
    return compression.float(), (stored + rest).float()


@torch.no_grad()
def measure_reconstruction(teacher, m, samples, max_rows: int, batch_rows: int, device: torch.device,
                           dtype: torch.dtype, seed: int):
    """Mean KL(teacher || reconstruction from the stored arrays) over up to max_rows held-out rows (the first
    samples of `samples`' only split), at temperatures[0]: the full logits are at hand here, and the rows go
    through the exact encode/decode path of the store. -> ReconstructionKL, or None if max_rows is 0."""
    import numpy as np

    from ..data import batch_loader, batches_of, sequential_keys
    from ..store.format import ReconstructionKL
    from ..store.values import encode_targets, to_host
    from ..targets import targets_from_arrays, teacher_rows

    lengths = samples.datasets[0].lengths
    if max_rows <= 0 or len(lengths) == 0:
        return None
    n = int(np.searchsorted(np.cumsum(lengths), max_rows, side="left")) + 1
    per_batch = max(1, batch_rows // int(lengths.max()))
    gen = torch.Generator(device=device).manual_seed(seed)
    comp, full, rows = 0.0, 0.0, 0
    for batch in batches_of(batch_loader(samples, sequential_keys([min(n, len(lengths))], [0], per_batch), 0)):
        x = batch["x"].to(device)
        z = samples.kind.rows(teacher(x), {**batch, "mask": batch["mask"].to(device)}).float()
        t = targets_from_arrays(to_host(encode_targets(teacher_rows(z, m, gen), m), m), m)
        valid = t.counts > 0 if t.counts is not None else None
        c, f = reconstruction_kl(z.cpu(), t.values, t.indices, t.lse[:, 0], m.temperatures[0], valid)
        comp, full, rows = comp + float(c.sum()), full + float(f.sum()), rows + len(c)
    return ReconstructionKL(compression=comp / rows, full=full / rows, rows=rows, temperature=m.temperatures[0])
