"""How stored teacher values are coded, per the manifest's `values_scheme` (docs/store-format-sequence.md).

raw       topk_logits = the teacher's logits z (classification stores, format as in issue 2).
relative  topk_logits = z - max(z) <= 0 in float16/float32, and lse = logsumexp((z - max z) / tau).
          Softmax is shift-invariant, so exp(v / tau - lse) are the exact probabilities, and fp16 keeps
          its finest spacing near 0, where the probable ids are (raw fp16 logits of 30-50 are 0.03 apart).
q8        relative values coded as uint8: code = round(-v / s), s = value_scale[r] (float16) per row,
          chosen so the row's smallest stored value maps to <= 255. Decoded v = -code * s. Error <= s/2.
Relative values are clamped at -RELATIVE_FLOOR (exp(-1e4) is 0 in any float) so masked -inf logits stay finite.
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
