"""How stored teacher values are coded, per the manifest's `values_scheme` (docs/store-format.md "Values").

raw       topk_logits = the teacher's logits z (classification stores written before kd-pipeline 0.2 only).
relative  topk_logits = z - max(z) <= 0 in float16/float32, and lse = logsumexp((z - max z) / tau).
          Softmax is shift-invariant, so exp(v / tau - lse) are the exact probabilities, and fp16 keeps
          its finest spacing near 0, where the probable ids are (raw fp16 logits of 30-50 are 0.03 apart,
          and an offset of 1000 leaves 0.5: the tail of 18 % of rows was lost).
q8        relative values coded as uint8: code = round(-v / s), s = value_scale[r] (float16) per row,
          chosen so the row's smallest stored value maps to <= 255. Decoded v = -code * s. Error <= s/2.
Relative values are clamped at -RELATIVE_FLOOR (exp(-1e4) is 0 in any float) so masked -inf logits stay finite.

`encode_targets` writes the lse that makes the *decoded* values carry exactly the teacher's mass on the stored
ids, so the tail mass 1 - sum p_i read back is exact (and never negative) whatever the dtype's rounding.
"""

from __future__ import annotations

import numpy as np
import torch

RELATIVE_FLOOR = 1.0e4


def _encode_values(rel: torch.Tensor, scheme: str, dtype: str) -> dict[str, torch.Tensor]:
    """rel: (n, k) float32 values relative to each row's top logit (<= 0) -> the arrays that store them."""
    rel = rel.float().clamp(min=-RELATIVE_FLOOR)
    if scheme == "relative":
        return {"topk_logits": rel.to(getattr(torch, dtype))}
    if scheme != "q8":
        raise ValueError(f"values_scheme {scheme!r} is not a relative scheme")
    span = (-rel.amin(dim=1)).clamp(min=1e-6)  # (n,) largest distance from the top
    scale = (span / 255.0).half()
    short = scale.float() * 255.0 < span  # fp16 rounding made s too small: step it up once
    scale = torch.where(short, torch.nextafter(scale, torch.full_like(scale, float("inf"))), scale)
    codes = torch.round(-rel / scale.float()[:, None])
    return {"topk_logits": codes.clamp(0, 255).to(torch.uint8), "value_scale": scale}


def _decode_torch(a: dict[str, torch.Tensor], scheme: str) -> torch.Tensor:
    v = a["topk_logits"]
    if scheme == "q8":
        return -v.float() * a["value_scale"].float()[:, None]
    return v.float()


@torch.no_grad()
def encode_targets(t: dict[str, torch.Tensor], m) -> dict[str, torch.Tensor]:
    """Targets from `kd_pipeline.targets.teacher_rows` -> the store's arrays (topk_logits, topk_indices, lse[,
    value_scale, sample_counts]) in the manifest's dtypes, on the targets' device. m: the store's Manifest.

    The stored lse is the normaliser under which the *decoded* values carry exactly the teacher's mass on the
    stored ids, lse' = lse + log(sum exp(v_dec / tau - lse) / sum exp(v / tau - lse)) (in float64, at least the
    decoded values' own logsumexp, rounded up to float32): the tail mass 1 - sum p_i read back is exact and never
    negative. Plain rounding can push the decoded mass past 1 - tail and erase a small tail (fp16 values,
    8-bit steps)."""
    out = _encode_values(t["values"], m.values_scheme, m.values_dtype)
    out["topk_indices"] = t["ids"].to(torch.int32 if m.indices_scheme == "packed" else getattr(torch, m.indices_dtype))
    v = t["values"].double().clamp(min=-RELATIVE_FLOOR)  # (n, k) exact relative values
    v_dec = _decode_torch(out, m.values_scheme).double()
    valid = (t["counts"] > 0) if "counts" in t else torch.ones_like(v, dtype=torch.bool)
    taus = torch.tensor(m.temperatures, dtype=torch.float64, device=v.device)
    neg = torch.tensor(float("-inf"), dtype=torch.float64, device=v.device)
    exact = torch.logsumexp(torch.where(valid[:, None], v[:, None] / taus[None, :, None], neg), dim=2)  # (n, T)
    dec = torch.logsumexp(torch.where(valid[:, None], v_dec[:, None] / taus[None, :, None], neg), dim=2)
    # never below the decoded values' own logsumexp: the mass read back on the stored ids is <= 1, so the tail is
    # >= 0, even where the float32 lse of the full row is a rounding below the true one (a tail of ~1e-9)
    lse = torch.maximum(t["lse"].double() + dec - exact, dec)
    lse32 = lse.float()
    out["lse"] = torch.where(lse32.double() < lse, torch.nextafter(lse32, torch.full_like(lse32, float("inf"))), lse32)
    if "counts" in t:
        out["sample_counts"] = t["counts"].to(torch.int32)  # uint16 in the store: cast on the host (to_host)
    return out


def decode_values(block: dict[str, np.ndarray], scheme: str) -> np.ndarray:
    """The stored values of a block as float32 (N, k): raw logits, or logits relative to the row's top."""
    v = block["topk_logits"]
    if scheme == "q8":
        return -v.astype(np.float32) * block["value_scale"].astype(np.float32)[:, None]
    return v.astype(np.float32)


def to_host(arrays: dict[str, torch.Tensor], m) -> dict[str, np.ndarray]:
    """One device->host copy per array, then what the store declares (m: its Manifest): the numpy dtype (a
    no-op but for counts), and the ids coded per indices_scheme (packed on the host, store/ids.py)."""
    from .ids import encode_ids

    specs = m.array_specs()
    out = {}
    for name, a in arrays.items():
        x = a.cpu().numpy()
        if name == "topk_indices":
            out[name] = encode_ids(x, m)
            continue
        dt = np.dtype(specs[name][1])
        out[name] = x if x.dtype == dt else x.astype(dt)
    return out
