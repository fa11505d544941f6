"""Store format v1: the manifest schema and the naming/dtype rules shared by writer and reader.

Layout of a store folder:
    zarr.json                 root group; attribute `kd_cache` = the manifest below
    topk_logits/              (R, k) float16|float32  raw teacher logits, sorted descending per row
    topk_indices/             (R, k) int16|int32      class ids of those logits
                              (R, ceil(k*b/8)) uint8  indices_scheme "packed": b = ceil(log2 V) bits per id (ids.py)
    lse/                      (R, T) float32          logsumexp(z / tau) over ALL classes, per temperature
    features/<name>/          (R, ...)                a teacher module's output per row
    samples.parquet           sample_id, split, row, num_rows, label (nullable); sorted by row
  sequence stores (kind "sequence", docs/store-format-sequence.md) add:
    tokens/                   (R,) int32              input token ids; row r predicts the token after tokens[r]
    char_end/                 (R,) int32              char_offsets only: where tokens[r] ends in its sample's text
    loss_mask/                (R,) uint8              loss_mask only: 1 = row r's prediction carries loss
    value_scale/              (R,) float16            values_scheme "q8" only: logit = -code * scale
    sample_counts/            (R, k) uint16           targets "sampled" only: draws of each stored id (0 = pad)
  classification stores with augmented views (manifest `views`, kd_pipeline/views.py) add:
    view_seed/                (R,) int64              the seed that replays row r's view (-1 = the input as is)
    _markers/block-<b>.json   one per finished block: rows and sha256 of each array's block bytes
    _markers/synced-<i>.json  while writing: blocks shard i's last sync point made durable (synced.py)
Every array is chunked (chunk_rows, ...) along rows with no compression; block b = rows
[b*chunk_rows, (b+1)*chunk_rows), i.e. exactly one chunk of every array.
"""

from __future__ import annotations

import re
from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import StoreError

FORMAT = "kd-cache"
VERSION = 1
ATTR = "kd_cache"
SAMPLES = "samples.parquet"
MARKERS = "_markers"
CORE_ARRAYS = ("topk_logits", "topk_indices", "lse")
ROW_ARRAYS = ("tokens", "char_end", "loss_mask", "view_seed", "value_scale", "sample_counts")  # arrays some stores add (array_specs)
# what a row's input is (its token, text offset, loss mask, augmented view's seed), not the teacher's targets
INPUT_ARRAYS = ("tokens", "char_end", "loss_mask", "view_seed")
MAX_ROWS = 2**40  # refuse absurd counts before allocating anything
MAX_CLASSES = 2**24
MAX_ROW_BYTES = 2**26  # 64 MiB of targets + features per row
MAX_CHUNK_BYTES = 2**31  # one block of one array is read whole: 2 GiB at most
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def indices_dtype(num_classes: int) -> str:
    return "int16" if num_classes <= 32767 else "int32"


def id_bits(num_classes: int) -> int:
    """b = ceil(log2 V), at least 1: the fewest bits that hold every id in [0, V) (packed ids)."""
    return max(1, (int(num_classes) - 1).bit_length())


def packed_width(k: int, bits: int) -> int:
    """Bytes per row of k packed ids of `bits` bits each."""
    return -(-k * bits // 8)


def check_name(name: str, what: str) -> str:
    """Names from a manifest become paths: no separators, no '..', identifiers only."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise StoreError(f"{what}: invalid name {_short(name)} (letters, digits and _ only)")
    return name


class _Open(BaseModel):
    # Readers accept fields added by later minor revisions; known fields are type-checked.
    model_config = ConfigDict(extra="allow", frozen=True)


class TeacherInfo(_Open):
    factory: str
    kwargs: dict
    checkpoint_sha256: str
    # the teacher head's width when it was padded past num_classes; its logits from num_classes on were cut
    outputs: Optional[int] = Field(None, ge=2)


class DatasetInfo(_Open):
    factory: str
    kwargs: dict
    splits: list[str]
    split_sizes: dict[str, int]
    num_samples: int = Field(ge=0, le=MAX_ROWS)
    fingerprint: str
    # the split whose targets are stored for evaluation only (after the training rows); never trained on
    eval_split: Optional[str] = None


class FeatureInfo(_Open):
    shape: list[int] = Field(max_length=8)  # per-row shape
    dtype: Literal["float16", "float32"]
    module: str


class ReconstructionKL(_Open):
    """KL(p_teacher || p_from_store) per token at `temperature`, mean over `rows` held-out rows (nats)."""

    compression: float  # stored ids + one tail bucket: what the format loses
    full: float  # tail mass spread evenly over the ids not stored: what a consumer of the ids loses
    rows: int
    temperature: float


class ViewsInfo(_Open):
    """Augmented views (kd_pipeline/views.py): `count` rows per training sample, each with its `view_seed`."""

    count: int = Field(ge=1, le=4096)
    transform: dict  # name, version, factory, kwargs: what replays a row's view from its seed
    seed: int  # the pipeline seed the view seeds were drawn from


class Manifest(_Open):
    format: Literal["kd-cache"]
    version: int
    kind: Literal["classification", "sequence"]
    num_classes: int = Field(ge=2, le=MAX_CLASSES)
    top_k: int = Field(ge=1)
    temperatures: list[float] = Field(min_length=1, max_length=64)
    values_dtype: Literal["float16", "float32", "uint8"]
    indices_dtype: Literal["int16", "int32"]  # dtype of plain ids (packed stores keep the plain dtype here)
    # plain: topk_indices holds one int per id. packed: ceil(log2 num_classes) bits per id, bit-packed per
    # row into uint8 (kd_pipeline/store/ids.py). Optional: stores written before read as plain.
    indices_scheme: Literal["plain", "packed"] = "plain"
    # raw: teacher logits as they are. relative: logit - the row's top logit (<= 0), lse likewise shifted.
    # q8: relative, coded as uint8 code = round(-(logit - top) / value_scale[r]) (docs/store-format-sequence.md)
    values_scheme: Literal["raw", "relative", "q8"] = "raw"
    targets: Literal["topk", "sampled"] = "topk"
    sample_draws: Optional[int] = Field(None, ge=1)  # m ids drawn per row (targets "sampled")
    sample_temperature: Optional[float] = Field(None, gt=0)  # tau the ids were drawn at
    reconstruction_kl: Optional[ReconstructionKL] = None
    char_offsets: bool = False  # sequence: `char_end` per row (cross-tokenizer alignment)
    loss_mask: bool = False  # sequence: `loss_mask` per row (conversations: only assistant tokens carry loss)
    num_rows: int = Field(ge=0, le=MAX_ROWS)
    chunk_rows: int = Field(ge=1, le=2**24)
    # concatenated: splits one after another (stores before kd-pipeline 0.2); interleaved: the training splits
    # interleaved in proportion to their sizes, the eval split after them (kd_pipeline/layout.py)
    row_order: Literal["concatenated", "interleaved"] = "concatenated"
    teacher: TeacherInfo
    dataset: DatasetInfo
    features: dict[str, FeatureInfo] = {}
    views: Optional[ViewsInfo] = None  # classification only: augmented views, `count` rows per training sample
    complete: bool
    created_with: str
    created_at: Optional[str] = None

    @property
    def num_blocks(self) -> int:
        return -(-self.num_rows // self.chunk_rows)

    def identity(self) -> dict:
        """What must match for a half-written store to be resumed (everything but progress/time)."""
        d = self.model_dump(mode="json")
        for k in ("complete", "created_at", "created_with", "reconstruction_kl"):
            d.pop(k, None)
        return d

    def target_bytes_per_row(self) -> int:
        """Bytes of the stored targets per row (per token in a sequence store): every array but the inputs
        (tokens, their offsets and loss mask) and the features."""
        return sum(int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
                   for name, (shape, dtype) in self.array_specs().items() if name not in INPUT_ARRAYS and not name.startswith("features/"))

    def rows_per_sample(self, split: str) -> int | None:
        """Rows of every sample of `split`: 1 (classification), `views.count` (training splits of a store with
        views; its evaluation split keeps 1), None (sequence: varies)."""
        if self.kind == "sequence":
            return None
        return self.views.count if self.views is not None and split != self.dataset.eval_split else 1

    def array_specs(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """array path -> (shape, dtype) that the arrays must have."""
        R, k, T = self.num_rows, self.top_k, len(self.temperatures)
        specs = {
            "topk_logits": ((R, k), self.values_dtype),
            "topk_indices": ((R, packed_width(k, id_bits(self.num_classes))), "uint8") if self.indices_scheme == "packed"
            else ((R, k), self.indices_dtype),
            "lse": ((R, T), "float32"),
        }
        if self.kind == "sequence":
            specs["tokens"] = ((R,), "int32")
            if self.char_offsets:
                specs["char_end"] = ((R,), "int32")
            if self.loss_mask:
                specs["loss_mask"] = ((R,), "uint8")
        if self.values_scheme == "q8":
            specs["value_scale"] = ((R,), "float16")
        if self.targets == "sampled":
            specs["sample_counts"] = ((R, k), "uint16")
        if self.views is not None:
            specs["view_seed"] = ((R,), "int64")
        for name, f in self.features.items():
            specs[f"features/{name}"] = ((R, *f.shape), f.dtype)
        return specs


def _short(v) -> str:
    """An untrusted value in an error message: repr (no raw newlines), at most 60 characters."""
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def parse_manifest(raw, where: str) -> Manifest:
    if not isinstance(raw, dict):
        raise StoreError(f"{where}: no '{ATTR}' manifest in the root attributes (not a kd-cache store)")
    if raw.get("format") != FORMAT:
        raise StoreError(f"{where}: manifest format is {_short(raw.get('format'))}, expected {FORMAT!r}")
    v = raw.get("version")
    if not isinstance(v, int) or isinstance(v, bool) or v > VERSION or v < 1:
        raise StoreError(f"{where}: store format version {_short(v)} is not supported (this tool reads version {VERSION})")
    try:
        m = Manifest.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise StoreError(f"{where}: manifest.{key}: {err['msg']}") from None
    if m.top_k > m.num_classes:
        raise StoreError(f"{where}: manifest.top_k: {m.top_k} exceeds num_classes {m.num_classes}")
    if m.indices_dtype != indices_dtype(m.num_classes) and m.indices_dtype != "int32":
        raise StoreError(f"{where}: manifest.indices_dtype: int16 cannot hold {m.num_classes} classes")
    if any((not t > 0) for t in m.temperatures):
        raise StoreError(f"{where}: manifest.temperatures: must all be > 0, got {m.temperatures}")
    if (m.values_dtype == "uint8") != (m.values_scheme == "q8"):
        raise StoreError(f"{where}: manifest.values_scheme: {m.values_scheme!r} does not go with values_dtype {m.values_dtype!r}")
    if m.targets == "sampled" and (m.sample_draws is None or m.sample_temperature is None):
        raise StoreError(f"{where}: manifest.sample_draws: sampled targets need sample_draws and sample_temperature")
    if m.targets == "sampled" and m.sample_temperature != m.temperatures[0]:
        # the sampled-KD importance weights use lse[:, 0] as the sampling law (losses.sampled_kl)
        raise StoreError(f"{where}: manifest.sample_temperature: {m.sample_temperature} must equal temperatures[0] ({m.temperatures[0]})")
    for name in m.features:
        check_name(name, f"{where}: manifest.features")
    for s in m.dataset.splits:
        if s not in m.dataset.split_sizes:
            raise StoreError(f"{where}: manifest.dataset.split_sizes: no size for split {s!r}")
    if m.dataset.eval_split is not None and m.dataset.eval_split not in m.dataset.splits:
        raise StoreError(f"{where}: manifest.dataset.eval_split: {_short(m.dataset.eval_split)} is not one of the splits {m.dataset.splits}")
    _check_sizes(m, where)
    return m


def _check_sizes(m: Manifest, where: str) -> None:
    """Counts and shapes a hostile manifest could inflate, refused before anything is allocated."""
    for name, f in m.features.items():
        if any(not 1 <= d <= 2**24 for d in f.shape):
            raise StoreError(f"{where}: manifest.features.{name}.shape: {f.shape}: each dimension must be in 1..2**24")
    d = m.dataset
    if len(set(d.splits)) != len(d.splits) or set(d.splits) != set(d.split_sizes):
        raise StoreError(f"{where}: manifest.dataset.splits: {d.splits} must be distinct and match split_sizes {list(d.split_sizes)}")
    if m.views is not None and (m.kind != "classification" or d.eval_split is None):
        raise StoreError(f"{where}: manifest.views: only classification stores with an eval_split hold views")
    # rows: a fixed count per sample (classification), >= 1 per sample (sequence)
    total = sum(n * (m.rows_per_sample(s) or 1) for s, n in d.split_sizes.items())
    if any(not 0 <= n <= MAX_ROWS for n in d.split_sizes.values()) or (total != m.num_rows if m.kind == "classification" else total > m.num_rows):
        raise StoreError(f"{where}: manifest.dataset.split_sizes: {d.split_sizes} must add up to num_rows={m.num_rows}")
    row_bytes = 0
    for name, (shape, dtype) in m.array_specs().items():
        per_row = int(np.prod(shape[1:], dtype=np.float64)) * np.dtype(dtype).itemsize
        row_bytes += per_row
        if per_row * m.chunk_rows > MAX_CHUNK_BYTES:
            raise StoreError(f"{where}: manifest: array {name} would need {per_row * m.chunk_rows:,} bytes per block (limit {MAX_CHUNK_BYTES:,})")
    if m.indices_scheme == "packed" and 4 * m.top_k * m.chunk_rows > MAX_CHUNK_BYTES:  # unpacked to int32 on read
        raise StoreError(f"{where}: manifest: array topk_indices would need {4 * m.top_k * m.chunk_rows:,} bytes per block unpacked (limit {MAX_CHUNK_BYTES:,})")
    if row_bytes > MAX_ROW_BYTES:
        raise StoreError(f"{where}: manifest: {row_bytes:,} bytes per row (limit {MAX_ROW_BYTES:,})")
