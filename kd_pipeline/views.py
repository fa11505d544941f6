"""Augmentation-consistent cached views: FKD (Shen & Xing, "A Fast Knowledge Distillation Framework for Visual
Recognition", ECCV 2022, arXiv 2112.01528) and TinyViT's stored augmentation (Wu et al., ECCV 2022).

A target cached for the un-augmented input is the wrong target for an augmented one. So with
`cache.views: {count: V, transform}` the teacher pass stores V rows per training sample, one per augmented
view, and each row keeps the seed that made its view (`view_seed`, int64). The transform is a pure function
of (input, seed): the student replays the row's view from the stored seed and so always sees the input its
target belongs to. Evaluation-split samples keep one row, seed -1 = the input as the dataset returns it.

Both sides call the same two functions on the host: `expand` (teacher pass: sample batch -> V views per
sample, seeds drawn here) and `replay` (student: sample batch + the rows' stored seeds -> the same views).
A transform names itself and its version in the manifest; a student refuses a store whose transform
(factory, kwargs, name, version) differs from the one its own config declares (`check_views`), so a
store never makes the student import code it names.

Built-in transform `crop_flip` (name "crop_flip", version 1): zero-pad by `pad` on each side of the spatial
axes (the last one of (n, L) inputs, the last two of (n, H, W) / (n, C, H, W) ones), crop back to the input's
size at an offset in 0..2*pad per axis, then (if `flip`) mirror the last axis. Its parameters come from the
seed through SplitMix64 (Steele, Lea, Flood, OOPSLA 2014), so any reader can replay a row without this code:
with state = seed (as uint64) and next() = { state += 0x9E3779B97F4A7C15; z = state;
z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9; z = (z ^ (z >> 27)) * 0x94D049BB133111EB; return z ^ (z >> 31) }
(all mod 2^64), the offsets are next() % (2*pad + 1) per spatial axis in axis order, then flip = next() & 1.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, StoreError

IDENTITY = -1  # view_seed of a row whose input is used as it is (evaluation rows)
_GAMMA, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on uint64 (wrapping)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def splitmix64(seeds: np.ndarray, n: int) -> list[np.ndarray]:
    """The first n outputs of SplitMix64 started at each seed: n arrays (len(seeds),) uint64."""
    state = np.asarray(seeds, np.int64).astype(np.uint64)
    out = []
    with np.errstate(over="ignore"):
        for _ in range(n):
            state = state + _GAMMA
            out.append(_mix(state))
    return out


def view_seeds(seed: int, split: np.ndarray, sample_id: np.ndarray, count: int) -> np.ndarray:
    """(B,) samples -> (B * count,) int64 seeds in 0..2^63-1, sample-major (sample 0's views, then sample 1's).
    A hash of (pipeline seed, split index, sample id, view): a resumed or re-sharded pass draws the same."""
    with np.errstate(over="ignore"):
        h = _mix(np.uint64(seed & (2**64 - 1)) + _GAMMA)
        h = _mix(h ^ np.asarray(split, np.int64).astype(np.uint64) + _GAMMA)
        h = _mix(h ^ np.asarray(sample_id, np.int64).astype(np.uint64) + _GAMMA)
        h = np.repeat(h, count) ^ np.tile(np.arange(count, dtype=np.uint64), len(h))
        return (_mix(h + _GAMMA) >> np.uint64(1)).astype(np.int64)


class CropFlip:
    """Random crop of a zero-padded input (+ optional horizontal flip), replayable from a seed (module doc)."""

    name = "crop_flip"
    version = 1  # bump when the map seed -> view changes: stores of another version are refused

    def __init__(self, pad: int = 2, flip: bool = False):
        if pad < 0:
            raise ConfigError(f"cache.views.transform.kwargs.pad: must be >= 0, got {pad}")
        self.pad, self.flip = int(pad), bool(flip)
        self.kwargs = {"pad": self.pad, "flip": self.flip}

    def params(self, seeds: np.ndarray, axes: int) -> tuple[np.ndarray, np.ndarray]:
        """seeds (n,) int64 -> crop offsets (n, axes) in 0..2*pad (pad = centred, for IDENTITY), flip (n,) bool."""
        draws = splitmix64(seeds, axes + 1)
        off = np.stack([(d % np.uint64(2 * self.pad + 1)).astype(np.int64) for d in draws[:axes]], axis=1)
        flip = (draws[axes] & np.uint64(1)).astype(bool) & self.flip
        ident = np.asarray(seeds) == IDENTITY
        off[ident], flip[ident] = self.pad, False
        return off, flip

    def __call__(self, x: torch.Tensor, seeds: np.ndarray) -> torch.Tensor:
        """x (n, L), (n, H, W) or (n, C, H, W); seeds (n,) int64 -> the views, same shape and dtype."""
        axes = 1 if x.dim() == 2 else 2
        off, flip = self.params(seeds, axes)
        p = self.pad
        out = x
        if p:
            out = F.pad(x, (p, p) * axes)
            for a in range(axes):  # gather a window of the input's size per row, one spatial axis at a time
                dim = x.dim() - axes + a
                size = x.shape[dim]
                idx = torch.from_numpy(off[:, a])[:, None] + torch.arange(size)[None, :]  # (n, size)
                shape = [x.shape[0]] + [1] * (x.dim() - 1)
                shape[dim] = size
                out = out.gather(dim, idx.view(shape).expand(*out.shape[:dim], size, *out.shape[dim + 1 :]))
        if flip.any():
            f = torch.from_numpy(flip).view(-1, *[1] * (x.dim() - 1))
            out = torch.where(f, out.flip(-1), out)
        return out


def crop_flip(pad: int = 2, flip: bool = False) -> CropFlip:
    """The built-in view transform (module doc). flip mirrors left-right: off for digits, whose mirror images
    are other shapes."""
    return CropFlip(pad, flip)


def transform_info(transform, component) -> dict:
    """What a manifest records of a transform: name, version, and the component that builds it."""
    return {"name": transform.name, "version": int(transform.version), "factory": component.factory, "kwargs": dict(component.kwargs)}


class Views:
    """The views of one store: V per training sample, 1 (unaugmented) per evaluation-split sample."""

    def __init__(self, transform, count: int, seed: int, eval_split: int):
        self.transform, self.count, self.seed, self.eval_split = transform, count, seed, eval_split

    def rows_per_sample(self, split: np.ndarray) -> np.ndarray:
        return np.where(np.asarray(split) == self.eval_split, 1, self.count).astype(np.int64)

    def expand(self, batch: dict) -> dict:
        """Teacher side: a batch of B samples -> its rows: x, y and view_seed (n,), n = sum of rows_per_sample."""
        n = self.rows_per_sample(batch["split"])
        seeds = view_seeds(self.seed, batch["split"], batch["sample_id"], self.count)
        keep = (np.arange(self.count)[None, :] < n[:, None]).ravel()  # evaluation samples keep view 0 only
        seeds = seeds[keep]
        seeds[np.repeat(np.asarray(batch["split"]) == self.eval_split, n)] = IDENTITY
        return rows_of(batch, n, seeds, self.transform)


def replay(batch: dict, transform) -> dict:
    """Student side: a batch of B samples with `num_rows` (B,) and the rows' stored `view_seed` (n,) -> the
    rows' inputs and labels (x, y of n rows), each replayed from its seed."""
    return rows_of(batch, batch["num_rows"], batch["view_seed"], transform)


def rows_of(batch: dict, num_rows: np.ndarray, seeds: np.ndarray, transform) -> dict:
    reps = torch.from_numpy(np.asarray(num_rows, np.int64))
    x = batch["x"].repeat_interleave(reps, dim=0)
    seeds = np.asarray(seeds, np.int64)
    return {**batch, "x": transform(x, seeds), "y": batch["y"].repeat_interleave(reps), "view_seed": torch.from_numpy(seeds)}


def row_lengths(split_sizes: dict[str, int], count: int, eval_split: str) -> dict[str, np.ndarray]:
    """Rows of each sample per split, for the store layout."""
    return {s: np.full(n, 1 if s == eval_split else count, np.int64) for s, n in split_sizes.items()}


def build_views(cfg) -> tuple[object, dict] | None:
    """The config's transform and its manifest record, or None without cache.views."""
    if cfg.cache.views is None:
        return None
    from .components import call_factory

    comp = cfg.cache.views.transform
    t = call_factory(comp.factory, "cache.views.transform.factory", **comp.kwargs)
    for attr in ("name", "version"):
        if not hasattr(t, attr) or not callable(t):
            raise ConfigError(f"cache.views.transform.factory: {comp.factory} returned {type(t).__name__}: a view transform needs `name`, `version` and __call__(x, seeds)")
    return t, transform_info(t, comp)


def check_views(cfg, store) -> object | None:
    """The transform the student replays the store's views with; StoreError if the store's views and the
    config's cache.views disagree (one holds views and the other not, or another transform or version)."""
    m = store.manifest
    got = build_views(cfg)
    have = getattr(m, "views", None)
    if have is None and got is None:
        return None
    if have is None:
        raise StoreError(f"{store.path}: the store holds no views, the config declares cache.views; rebuild the store (kd run --stage cache_teacher)")
    if got is None:
        raise StoreError(f"{store.path}: the store holds {have.count} augmented views per sample ({have.transform['name']} v{have.transform['version']}); "
                         "declare the same cache.views.transform to replay them")
    if got[1] != have.transform:
        raise StoreError(f"{store.path}: views were made by {have.transform}, the config's cache.views.transform is {got[1]}; the student must replay the store's own transform")
    return got[0]
