"""What differs between a classification store and a sequence store, behind one small interface.

Every stage works on **rows**: a model's output for a batch becomes `(n, C)` logits, one row per store row, in
store order, with `(n,)` hard labels (-1 = none). The teacher pass turns rows into targets, the losses and the
metrics read rows, so they are written once for both kinds. What a kind says:

- `collate(items, keys)`: dataset items -> a batch (`x`, and what `rows`/`row_labels` need);
- `rows(out, batch)`: model output -> (n, C) rows; `row_labels(batch)`: (n,) labels;
- `row_arrays(batch)`: per-row arrays the store keeps besides the targets (the input tokens of a sequence);
- `sample_labels(batch)`: each sample's label for samples.parquet (None for sequences);
- `inputs_in_store`: whether a student's inputs come from the store itself (sequence) or from the dataset
  by sample id (classification).

classification: a sample is (input, label), one row; label -1 or None = unlabelled.
sequence: a sample is a window of token ids (L,), L rows; row t predicts token t+1 of the window (the last
row of a window has no label); a batch is right-padded in memory, never in the store.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from .errors import DataError

Batch = dict


def _where(keys, i: int) -> str:
    names, split, sid = keys
    return f"split {names[int(split[i])]!r} sample {int(sid[i])}"


class Classification:
    name = "classification"
    inputs_in_store = False

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def collate(self, items: list, keys) -> Batch:
        """items: (input, label) pairs; keys: (split names, split index (B,), sample id (B,)) for messages."""
        xs, ys = [], []
        for i, item in enumerate(items):
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise DataError(f"data: {_where(keys, i)}: expected an (input, label) pair, got {type(item).__name__}")
            xs.append(torch.as_tensor(item[0]))
            ys.append(self.label(item[1], keys, i))
        first = xs[0]
        for i, x in enumerate(xs):
            if x.shape != first.shape or x.dtype != first.dtype:
                raise DataError(f"data: {_where(keys, i)}: input {tuple(x.shape)} {x.dtype} differs from "
                                f"{tuple(first.shape)} {first.dtype} of {_where(keys, 0)}")
        return {"x": torch.stack(xs), "y": torch.tensor(ys, dtype=torch.int64)}

    def label(self, y, keys, i: int) -> int:
        """A label as the pipeline keeps it: an int in [0, C), or -1 for None / -1 (unlabelled)."""
        if y is None:
            return -1
        if isinstance(y, (torch.Tensor, np.ndarray)):
            if (y.numel() if torch.is_tensor(y) else y.size) != 1:
                raise DataError(f"data: {_where(keys, i)}: label must be one number, got shape {tuple(y.shape)}")
            y = y.item()
        if isinstance(y, bool) or not isinstance(y, numbers.Real):
            raise DataError(f"data: {_where(keys, i)}: label {y!r} is not a number")
        if not float(y).is_integer():
            raise DataError(f"data: {_where(keys, i)}: label {y!r} is not an integer (NaN or fractional)")
        y = int(y)
        if y != -1 and not 0 <= y < self.num_classes:
            raise DataError(f"data: {_where(keys, i)}: label {y} outside 0..{self.num_classes - 1} (num_classes = {self.num_classes}; -1 or null = unlabelled)")
        return y

    def check_labels(self, y: torch.Tensor, keys) -> torch.Tensor:
        """Vectorised label checks for datasets that hand over whole label arrays. -> (B,) int64."""
        if y.is_floating_point():
            bad = ~(torch.isfinite(y) & (y == y.round()))
            if bad.any():
                i = int(bad.nonzero()[0, 0])
                raise DataError(f"data: {_where(keys, i)}: label {float(y[i])!r} is not an integer (NaN or fractional)")
        y = y.to(torch.int64)
        bad = (y != -1) & ((y < 0) | (y >= self.num_classes))
        if bad.any():
            i = int(bad.nonzero()[0, 0])
            raise DataError(f"data: {_where(keys, i)}: label {int(y[i])} outside 0..{self.num_classes - 1} (num_classes = {self.num_classes}; -1 or null = unlabelled)")
        return y

    def rows(self, out: torch.Tensor, batch: Batch) -> torch.Tensor:
        return out.flatten(1) if out.dim() > 2 else out

    def row_labels(self, batch: Batch) -> torch.Tensor:
        return batch["y"]

    def row_arrays(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {}

    def sample_labels(self, batch: Batch) -> torch.Tensor | None:
        """(B,) the label of each sample, as samples.parquet keeps it (-1 = null)."""
        return batch["y"]

    def num_rows(self, batch: Batch) -> torch.Tensor:
        return torch.ones(len(batch["y"]), dtype=torch.int64)


class Sequence:
    name = "sequence"
    inputs_in_store = True

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def collate(self, items: list, keys=None) -> Batch:
        """items: (L,) int token ids (L >= 1) -> x (B, T) int64 (0-padded), y (B, T) next token (-1 at each
        window's last position and on padding), mask (B, T) real positions, lengths (B,). T = max L."""
        seqs = [np.asarray(it, dtype=np.int64) for it in items]
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        for i, s in enumerate(seqs):
            if s.ndim != 1 or len(s) == 0 or (len(s) and (s.min() < 0 or s.max() >= self.num_classes)):
                where = _where(keys, i) if keys is not None else f"item {i}"
                raise DataError(f"data: {where}: expected 1-D token ids in 0..{self.num_classes - 1}")
        B, T = len(seqs), int(lengths.max())
        x = np.zeros((B, T), np.int64)
        for i, s in enumerate(seqs):
            x[i, : len(s)] = s
        return pad_batch(x, lengths)

    def rows(self, out: torch.Tensor, batch: Batch) -> torch.Tensor:
        return out[batch["mask"].to(out.device)]

    def row_labels(self, batch: Batch) -> torch.Tensor:
        return batch["y"][batch["mask"]]

    def row_arrays(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {"tokens": batch["x"][batch["mask"]].to(torch.int32)}

    def sample_labels(self, batch: Batch) -> None:
        return None  # a window's labels are its own next tokens, kept in the store's tokens

    def num_rows(self, batch: Batch) -> torch.Tensor:
        return batch["lengths"]


def pad_batch(x: np.ndarray, lengths: np.ndarray) -> Batch:
    """x (B, T) token ids right-padded with anything, lengths (B,) -> the sequence batch (see collate)."""
    T = x.shape[1]
    pos = np.arange(T)[None, :]
    mask = pos < lengths[:, None]
    x = np.where(mask, x, 0).astype(np.int64)
    y = np.full(x.shape, -1, np.int64)
    y[:, :-1] = np.where(pos[:, 1:] < lengths[:, None], x[:, 1:], -1)
    return {"x": torch.from_numpy(x), "y": torch.from_numpy(y), "mask": torch.from_numpy(mask), "lengths": torch.from_numpy(lengths)}


KINDS = {"classification": Classification, "sequence": Sequence}


def kind_for(name: str, num_classes: int):
    return KINDS[name](num_classes)
