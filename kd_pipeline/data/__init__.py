"""Datasets. The protocol (see README): a factory `f(split: str, **kwargs)` returns a map-style torch
Dataset whose items are `(input, label)`: `input` a tensor or array, `label` an int (-1 or None = unlabelled).
Sequence pipelines read token windows prepared from a text corpus instead (kd_pipeline/lm/)."""

from .arrays import ArrayDataset, Keys, SplitSamples, batch_loader, batches_of, open_split, sequential_keys

__all__ = ["ArrayDataset", "Keys", "SplitSamples", "batch_loader", "batches_of", "open_split", "sequential_keys"]
