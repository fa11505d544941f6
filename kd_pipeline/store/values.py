"""How stored teacher values are coded, per the manifest's `values_scheme` (docs/store-format-sequence.md).

raw       topk_logits = the teacher's logits z (classification stores, format as in issue 2).
relative  topk_logits = z - max(z) <= 0 in float16/float32, and lse = logsumexp((z - max z) / tau).
          Softmax is shift-invariant, so exp(v / tau - lse) are the exact probabilities, and fp16 keeps
          its finest spacing near 0, where the probable ids are (raw fp16 logits of 30-50 are 0.03 apart).
q8        relative values coded as uint8: code = round(-v / s), s = value_scale[r] (float16) per row,
          chosen so the row's smallest stored value maps to <= 255. Decoded v = -code * s. Error <= s/2.
Relative values are clamped at -RELATIVE_FLOOR (exp(-1e4) is 0 in any float) so masked -inf logits stay finite.
`encode_relative` is what writers call: the coded values plus an lse that absorbs their rounding.
"""

from __future__ import annotations

import numpy as np

RELATIVE_FLOOR = 1.0e4


def encode_values(rel: np.ndarray, scheme: str, dtype: str) -> dict[str, np.ndarray]:
    """rel: (N, k) float32 values relative to each row's top logit (<= 0) -> the arrays that store them."""
    rel = np.maximum(rel.astype(np.float32), -RELATIVE_FLOOR)
    if scheme == "relative":
        return {"topk_logits": rel.astype(dtype)}
    if scheme != "q8":
        raise ValueError(f"values_scheme {scheme!r} is not a relative scheme")
    span = np.maximum(-rel.min(axis=1), 1e-6)  # (N,) largest distance from the top
    scale = (span / 255.0).astype(np.float16)
    short = scale.astype(np.float32) * 255.0 < span  # fp16 rounding made s too small: step it up once
    scale[short] = np.nextafter(scale[short], np.float16(np.inf))
    codes = np.rint(-rel / scale.astype(np.float32)[:, None])
    return {"topk_logits": np.clip(codes, 0, 255).astype(np.uint8), "value_scale": scale}


def decode_values(block: dict[str, np.ndarray], scheme: str) -> np.ndarray:
    """The stored values of a block as float32 (N, k): raw logits, or logits relative to the row's top."""
    v = block["topk_logits"]
    if scheme == "q8":
        return -v.astype(np.float32) * block["value_scale"].astype(np.float32)[:, None]
    return v.astype(np.float32)


def encode_relative(rel: np.ndarray, lse: np.ndarray, temperatures, scheme: str, dtype: str,
                    valid: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Exact relative values and their normalisers -> the stored arrays, lse absorbing the value rounding.

    rel: (n, k) values relative to each row's top (<= 0); lse: (n, T) logsumexp(rel_full / tau_t) over all
    classes; temperatures: the T taus; valid: (n, k) bool, False for padding slots (sampled rows), or None.
    Returns topk_logits [+ value_scale] as `encode_values`, and lse (n, T) float32: the normaliser under which
    the *decoded* values carry exactly the mass of the exact ones on the stored ids,
        lse' = lse + log(sum_i exp(v_dec_i / tau - lse) / sum_i exp(v_i / tau - lse)),
    so the tail mass 1 - sum p_i read back is exact. Plain rounding can push the decoded mass past 1 - tail
    (8-bit steps are span/255 nats) and erase a small tail, which costs p_tail * log(p_tail / ~0) in the KL."""
    out = encode_values(rel, scheme, dtype)
    taus = np.asarray(temperatures, np.float64)[None, :, None]  # (1, T, 1)
    exact = _masked_lse(rel.astype(np.float64)[:, None, :] / taus, valid)  # (n, T)
    dec = _masked_lse(decode_values(out, scheme).astype(np.float64)[:, None, :] / taus, valid)
    out["lse"] = (lse.astype(np.float64) + dec - exact).astype(np.float32)
    return out


def _masked_lse(x: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """logsumexp over the last axis of x (n, T, k), slots with valid (n, k) False left out."""
    if valid is not None:
        x = np.where(valid[:, None, :], x, -np.inf)
    top = x.max(axis=2, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return (top + np.log(np.exp(x - top).sum(axis=2, keepdims=True)))[..., 0]
