"""A map-style dataset generated from the sample index, holding nothing: any size costs no memory, so a run's
peak RSS shows what the pipeline itself keeps (tests/test_memory.py, bench/memory.py)."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset


class LazyDataset(Dataset):
    """Sample i of a split: `dim` float32 values sin(f * (i + 1) + phase) (a deterministic function of i), and
    label i % num_classes (-1 in the transfer split). Batched reads through __getitems__ (one numpy call)."""

    def __init__(self, split: str, sizes: dict, dim: int, num_classes: int = 10):
        self.n, self.dim, self.num_classes = int(sizes[split]), dim, num_classes
        self.labelled = split != "transfer"
        self.phase = {"train": 0.0, "transfer": 1.0, "test": 2.0}[split]
        self.freqs = np.linspace(0.01, 1.0, dim, dtype=np.float64)

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, ids: list[int]) -> list:
        i = np.asarray(ids, dtype=np.float64)[:, None] + 1.0
        x = np.sin(i * self.freqs[None, :] + self.phase).astype(np.float32)
        y = [int(j) % self.num_classes if self.labelled else -1 for j in ids]
        return list(zip(x, y))

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]


def lazy_dataset(split: str, train: int, transfer: int, test: int, dim: int) -> LazyDataset:
    return LazyDataset(split, {"train": train, "transfer": transfer, "test": test}, dim)
