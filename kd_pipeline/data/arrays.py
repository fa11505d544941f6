"""Turning a user's map-style Dataset into contiguous arrays, and fingerprinting it.

The student stage gathers inputs by `sample_id` for whole shuffled blocks at a time, so it wants one
(N, ...) tensor per split rather than N `__getitem__` calls per epoch. Datasets that already hold arrays
(`ArrayDataset`, `TensorDataset`) are used as they are; any other is collated once through a DataLoader.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..components import resolve
from ..errors import DataError


class ArrayDataset(Dataset):
    """(inputs[i], labels[i]); labels are int64 with -1 for unlabelled samples."""

    def __init__(self, inputs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor):
        self.inputs = torch.as_tensor(inputs)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        if len(self.inputs) != len(self.labels):
            raise DataError(f"inputs ({len(self.inputs)}) and labels ({len(self.labels)}) differ in length")

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i):
        return self.inputs[i], int(self.labels[i])


def build_split(data_cfg, split: str) -> Dataset:
    fn = resolve(data_cfg.factory, "data.factory")
    ds = fn(split=split, **data_cfg.kwargs)
    if not hasattr(ds, "__len__") or not hasattr(ds, "__getitem__"):
        raise DataError(f"data.factory: split {split!r}: expected a map-style Dataset, got {type(ds).__name__}")
    return ds


def load_arrays(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """-> inputs (N, ...) float/int tensor, labels (N,) int64 (-1 = unlabelled)."""
    if isinstance(ds, ArrayDataset):
        return ds.inputs, ds.labels
    if isinstance(ds, TensorDataset) and len(ds.tensors) == 2:
        return ds.tensors[0], ds.tensors[1].to(torch.int64)
    xs, ys = [], []
    for x, y in DataLoader(ds, batch_size=1024, shuffle=False, collate_fn=_collate):
        xs.append(x)
        ys.append(y)
    if not xs:
        raise DataError("dataset split is empty")
    return torch.cat(xs), torch.cat(ys)


def _collate(items):
    xs, ys = zip(*items)
    labels = [(-1 if y is None else int(y)) for y in ys]
    return torch.stack([torch.as_tensor(x) for x in xs]), torch.tensor(labels, dtype=torch.int64)


def fingerprint(splits: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> str:
    """sha256 over each split's name, shapes, dtypes and the full input and label bytes (in split order).

    Full content, not a sample: a store made for other data must never be read as if it were ours. At
    24,000 x 40 float32 this is ~4 MB of hashing (a few ms).
    """
    h = hashlib.sha256()
    for name, (x, y) in splits.items():
        xa = np.ascontiguousarray(x.numpy())
        ya = np.ascontiguousarray(y.numpy())
        h.update(f"{name}|{xa.shape}|{xa.dtype}|{ya.shape}|{ya.dtype}|".encode())
        h.update(memoryview(xa).cast("B"))
        h.update(memoryview(ya).cast("B"))
    return "sha256:" + h.hexdigest()


def load_splits(data_cfg, names: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """split name -> (inputs (N, ...), labels (N,) int64), in the given order."""
    return {name: load_arrays(build_split(data_cfg, name)) for name in names}
