"""Datasets as the stages see them: map-style, read a batch of sample ids at a time, never materialised.

`open_split(data_cfg, split)` calls the user's factory (its exceptions become one line naming the factory);
`SplitSamples` addresses the samples of several splits by (split index, sample id) and returns whole batches
through `__getitems__`, which `torch.utils.data.DataLoader` calls in its workers with what our batch sampler
yields. Datasets that hold arrays (`ArrayDataset`, `TensorDataset`) are gathered with one index per batch;
any other is read item by item and collated by the kind (kd_pipeline/kinds.py), which checks shapes and labels.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..components import call_factory
from ..errors import DataError, KDError

Keys = tuple[np.ndarray, np.ndarray]  # (split index (B,), sample id (B,)): one batch's samples


class ArrayDataset(Dataset):
    """(inputs[i], labels[i]); labels are int64 with -1 for unlabelled samples."""

    def __init__(self, inputs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor):
        self.inputs = torch.as_tensor(inputs)
        self.labels = torch.as_tensor(labels)
        if len(self.inputs) != len(self.labels):
            raise DataError(f"inputs ({len(self.inputs)}) and labels ({len(self.labels)}) differ in length")

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i):
        return self.inputs[i], self.labels[i].item()


def open_split(data_cfg, split: str) -> Dataset:
    """The user's dataset for `split` (map-style: __len__ and __getitem__)."""
    ds = call_factory(data_cfg.factory, "data.factory", split=split, **data_cfg.kwargs)
    if not hasattr(ds, "__len__") or not hasattr(ds, "__getitem__"):
        raise DataError(f"data.factory: {data_cfg.factory}: split {split!r}: expected a map-style Dataset (__len__ and __getitem__), got {type(ds).__name__}")
    return ds


def _arrays(ds) -> tuple[torch.Tensor, torch.Tensor] | None:
    if isinstance(ds, ArrayDataset):
        return ds.inputs, ds.labels
    if isinstance(ds, TensorDataset) and len(ds.tensors) == 2:
        return ds.tensors[0], ds.tensors[1]
    return None


class SplitSamples(Dataset):
    """Samples of several splits, fetched a batch at a time: `__getitems__((split idx, ids))` -> a batch dict
    from `kind.collate` with `split` and `sample_id` (numpy) added, in the order asked."""

    def __init__(self, datasets: list[Dataset], names: list[str], kind):
        self.datasets, self.names, self.kind = datasets, names, kind

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def __getitems__(self, keys: Keys) -> dict:
        split, sid = keys
        where = (self.names, split, sid)
        for t in np.unique(split):
            n = len(self.datasets[t])
            bad = np.flatnonzero((split == t) & ((sid < 0) | (sid >= n)))
            if bad.size:
                raise DataError(f"data: split {self.names[t]!r} sample {int(sid[bad[0]])}: outside the split's {n} samples (the store was made for a larger split)")
        arrays = [_arrays(self.datasets[t]) for t in range(len(self.datasets))]
        if all(arrays[t] is not None for t in np.unique(split)):
            batch = self._gather(arrays, split, sid, where)
        else:
            batch = self.kind.collate(self._items(split, sid), where)
        batch["split"], batch["sample_id"] = split, sid
        return batch

    def head(self, k: int = 2, split: int = 0) -> dict:
        """A batch of the first k samples of a split: probes (output width, feature shapes)."""
        ids = np.arange(min(k, len(self.datasets[split])), dtype=np.int64)
        return self.__getitems__((np.full(len(ids), split, np.int64), ids))

    def _items(self, split: np.ndarray, sid: np.ndarray) -> list:
        """Items in the order asked; a dataset with its own `__getitems__(ids)` gets one call per split."""
        items: list = [None] * len(sid)
        for t in np.unique(split):
            pos = np.flatnonzero(split == t)
            ds = self.datasets[int(t)]
            if hasattr(ds, "__getitems__"):
                got = self._call(int(t), int(sid[pos[0]]), lambda: ds.__getitems__(sid[pos].tolist()))
                for p, it in zip(pos.tolist(), got):
                    items[p] = it
            else:
                for p in pos.tolist():
                    items[p] = self._call(int(t), int(sid[p]), lambda p=p: ds[int(sid[p])])
        return items

    def _call(self, t: int, j: int, fn):
        try:
            return fn()
        except Exception as e:  # the user's own __getitem__: name the sample, exit 2
            msg = str(e).splitlines()[0] if str(e) else ""
            raise DataError(f"data: split {self.names[t]!r} sample {j}: reading it raised {type(e).__name__}: {msg}") from e

    def _gather(self, arrays, split: np.ndarray, sid: np.ndarray, where) -> dict:
        """One indexed read per split for array datasets (no per-item Python)."""
        parts = {int(t): (np.flatnonzero(split == t), torch.from_numpy(sid[split == t])) for t in np.unique(split)}
        first = arrays[int(split[0])][0]
        x = torch.empty((len(sid), *first.shape[1:]), dtype=first.dtype)
        y = torch.empty(len(sid), dtype=arrays[int(split[0])][1].dtype)
        for t, (pos, ids) in parts.items():
            xs, ys = arrays[t]
            if xs.shape[1:] != first.shape[1:] or xs.dtype != first.dtype:
                raise DataError(f"data: split {self.names[t]!r}: inputs {tuple(xs.shape[1:])} {xs.dtype} differ from "
                                f"{tuple(first.shape[1:])} {first.dtype} of split {self.names[int(split[0])]!r}")
            p = torch.from_numpy(pos)
            x[p] = xs[ids]
            y = y.to(torch.promote_types(y.dtype, ys.dtype))
            y[p] = ys[ids].to(y.dtype)
        return {"x": x, "y": self.kind.check_labels(y, where)}


def _identity(batch):
    return batch


def batch_loader(dataset: SplitSamples, batches: Iterable[Keys], num_workers: int, pin_memory: bool = False,
                 start_method: str | None = None) -> DataLoader:
    """A DataLoader that fetches the batches `batches` yields (in that order), in `num_workers` processes.
    start_method: how workers start (None: the platform's default, fork on Linux; "forkserver" while this
    process holds a remote store's client, which is not fork-safe: kd_pipeline/store/location.py)."""
    return DataLoader(dataset, batch_sampler=batches, collate_fn=_identity, num_workers=num_workers,
                      pin_memory=pin_memory, prefetch_factor=4 if num_workers else None,
                      multiprocessing_context=start_method if num_workers else None)


def sequential_keys(sizes: list[int], splits: list[int], batch_size: int) -> Iterable[Keys]:
    """Every sample of the given splits in order, cut into batches (data checks, evaluation)."""
    for t in splits:
        for a in range(0, sizes[t], batch_size):
            ids = np.arange(a, min(a + batch_size, sizes[t]), dtype=np.int64)
            yield np.full(len(ids), t, np.int64), ids


def batches_of(loader: DataLoader):
    """Iterates a DataLoader; a KDError raised in a worker comes back as the same one-line error (DataLoader
    re-raises it with the worker's traceback in its message)."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except KDError as e:
            msg = str(e)
            if "Original Traceback" in msg:
                last = [ln for ln in msg.splitlines() if ln.strip()][-1]
                msg = last.split(": ", 1)[1] if last.startswith(("kd_pipeline.", type(e).__name__)) else last
            raise type(e)(msg) from None
        yield batch
