"""How stored class ids are coded, per the manifest's `indices_scheme` (docs/store-format.md).

plain   topk_indices (R, k) int16 | int32: one id per element.
packed  topk_indices (R, ceil(k*b/8)) uint8 with b = ceil(log2 V) bits per id (13 at V = 8,192, 17 at
        128,256, 18 at 151,936 and 262,144). Row r's bytes, read as one little-endian unsigned integer X,
        hold id i in bits [i*b, (i+1)*b): id_i = (X >> (i*b)) & (2**b - 1); the bits above k*b are 0.
        The ids keep their order (descending value), so each stays aligned with its value; lossless.
At V = 128,256 and k = 32 that is 68 B per row instead of 128 (int32). Sorting the ids would save about
log2(k!) bits more per row, but readers rely on ids in value order, so this code does not reorder them.

Speed (`python -m bench.lm_speed --ids`, docs/benchmarks.md LM 4): unpacking reads each id with one unaligned
32-bit load, a shift and a mask, vectorised over the block: 0.6 ms for 16,384 rows of 32 ids (~1.2 ns per id).
"""

from __future__ import annotations

import numpy as np

from .format import Manifest, id_bits, packed_width

MAX_BITS = 24  # ids of V <= 2**24 classes (format.MAX_CLASSES): a <= 7-bit offset + 24 bits fit one uint32


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"packed ids: {bits} bits per id is outside 1..{MAX_BITS}")


# Both directions work on groups of 8 ids, which fill exactly b bytes: id q of every group (q = 0..7) starts
# at the same byte s_q = floor(q*b/8) of its group, at bit offset q*b % 8. So each q is one strided numpy
# operation over all rows and groups (8 per call, whatever N and k), with no per-row or per-id loop and no
# fancy indexing.


def pack_ids(ids: np.ndarray, bits: int) -> np.ndarray:
    """ids: (N, k) integers in [0, 2**bits) -> (N, packed_width(k, bits)) uint8, layout as in the module doc.

    Raises ValueError for an id outside [0, 2**bits) or bits outside 1..MAX_BITS."""
    _check_bits(bits)
    ids = np.asarray(ids)
    N, k = ids.shape
    if ids.size and (ids.min() < 0 or ids.max() >= 1 << bits):
        raise ValueError(f"packed ids: ids must be in [0, {1 << bits}), got {ids.min()}..{ids.max()}")
    G = -(-k // 8)  # groups of 8 ids; the last is padded with id 0, which adds no bits
    w = np.zeros((N, 8 * G), np.uint32)
    w[:, :k] = ids
    out = np.zeros((N, G * bits + 3), np.uint8)  # 3 spare bytes: the last id's bytes fit; cut off below
    for q in range(8):
        s, shift = q * bits // 8, q * bits % 8
        word = w[:, q::8] << np.uint32(shift)  # (N, G) the ids at their bit offset in byte s_q
        # ids' bits are disjoint, so OR-ing in their bytes assembles the rows; byte j of id q of every group
        # is one strided column (stride b bytes), each hit once per q and j
        for j in range((shift + bits + 7) // 8):
            out[:, s + j : s + j + G * bits : bits] |= (word >> np.uint32(8 * j)).astype(np.uint8)
    return np.ascontiguousarray(out[:, : packed_width(k, bits)])


def unpack_ids(packed: np.ndarray, k: int, bits: int) -> np.ndarray:
    """(N, packed_width(k, bits)) uint8 -> (N, k) int32 ids, the exact inverse of pack_ids.

    Raises ValueError when the array is not (N, packed_width(k, bits)) uint8 or bits is outside 1..MAX_BITS."""
    _check_bits(bits)
    width = packed_width(k, bits)
    if packed.ndim != 2 or packed.shape[1] != width or packed.dtype != np.uint8:
        raise ValueError(f"packed ids: expected (N, {width}) uint8 for {k} ids of {bits} bits, got {packed.shape} {packed.dtype}")
    N, G = packed.shape[0], -(-k // 8)
    if N == 0 or k == 0:
        return np.zeros((N, k), np.int32)
    p = np.zeros((N, G * bits + 3), np.uint8)  # whole groups + 3 bytes, so every 4-byte load stays in the row
    p[:, :width] = packed
    out = np.empty((N, 8 * G), np.uint32)
    mask = np.uint32((1 << bits) - 1)
    for q in range(8):
        s, shift = q * bits // 8, q * bits % 8
        # the little-endian uint32 at byte s_q of every group of every row: a strided view, unaligned, no copy
        words = np.ndarray((N, G), dtype="<u4", buffer=p, offset=s, strides=(p.strides[0], bits))
        np.bitwise_and(words >> np.uint32(shift), mask, out=out[:, q::8])
    return out.view(np.int32)[:, :k]  # ids < 2**24: the same bits as int32


def stray_bits(block: dict[str, np.ndarray], m: Manifest) -> np.ndarray:
    """(N,) bool: rows of a packed block whose padding bits (above k*b in the last byte) are not 0, which
    pack_ids never writes; all False for plain ids."""
    a = block["topk_indices"]
    bits = id_bits(m.num_classes)
    used = m.top_k * bits - 8 * (packed_width(m.top_k, bits) - 1)  # bits of the last byte that hold ids, 1..8
    if m.indices_scheme != "packed" or used == 8 or a.shape[0] == 0:
        return np.zeros(a.shape[0], bool)
    return (a[:, -1] >> used) != 0


def encode_ids(ids: np.ndarray, m: Manifest) -> np.ndarray:
    """(N, k) ids -> what the store's `topk_indices` holds under the manifest's indices_scheme."""
    if m.indices_scheme == "packed":
        return pack_ids(ids, id_bits(m.num_classes))
    return np.asarray(ids).astype(m.indices_dtype)


def decode_ids(block: dict[str, np.ndarray], m: Manifest) -> np.ndarray:
    """The ids (N, k) of a block's `topk_indices`: as stored (plain, int16/int32) or unpacked (int32)."""
    if m.indices_scheme == "packed":
        return unpack_ids(block["topk_indices"], m.top_k, id_bits(m.num_classes))
    return block["topk_indices"]
