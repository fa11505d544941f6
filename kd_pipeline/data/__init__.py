"""Datasets. The protocol (see README): a factory `f(split: str, **kwargs)` returns a map-style torch
Dataset whose items are `(input, label)`; `input` is a tensor or array, `label` an int (-1 = unlabelled)."""

from .arrays import ArrayDataset, build_split, fingerprint, load_arrays, load_splits

__all__ = ["ArrayDataset", "build_split", "fingerprint", "load_arrays", "load_splits"]
