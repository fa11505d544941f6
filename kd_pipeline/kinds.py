"""What differs between a classification store and a sequence store, behind one small interface.

Every stage works on **rows**: a model's output for a batch becomes `(n, C)` logits, one row per store row, in
store order, with `(n,)` hard labels (-1 = none). The teacher pass turns rows into targets, the losses and the
metrics read rows, so they are written once for both kinds. What a kind says:

- `collate(items, keys)`: dataset items -> a batch (`x`, and what `rows`/`row_labels` need);
- `rows(out, batch)`: model output -> (n, C) rows; `row_labels(batch)`: (n,) labels;
- `row_arrays(batch)`: per-row arrays the store keeps besides the targets (a sequence's input tokens, their
  character offsets and, for conversations, the loss mask);
- `row_loss_mask(batch)`: (n,) rows that carry loss (both CE and KD), or None = all;
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

    def row_loss_mask(self, batch: Batch) -> None:
        return None  # every row carries loss

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
        """items: (L,) int token ids (L >= 1), or dicts {"ids", ["chars", "loss"]} (kd_pipeline/lm/tokenizer.py)
        -> x (B, T) int64 (0-padded), y (B, T) next token (-1 at each window's last position, on padding and
        where the loss mask is 0), mask (B, T) real positions, lengths (B,)[, chars, loss_mask]. T = max L."""
        dicts = [it if isinstance(it, dict) else {"ids": it} for it in items]
        seqs = [np.asarray(d["ids"], dtype=np.int64) for d in dicts]
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        for i, s in enumerate(seqs):
            if s.ndim != 1 or len(s) == 0 or (len(s) and (s.min() < 0 or s.max() >= self.num_classes)):
                where = _where(keys, i) if keys is not None else f"item {i}"
                raise DataError(f"data: {where}: expected 1-D token ids in 0..{self.num_classes - 1}")
        B, T = len(seqs), int(lengths.max())
        out = {k: np.zeros((B, T), np.int64) for k in ("ids", "chars", "loss") if k in dicts[0]}
        for i, d in enumerate(dicts):
            for k, a in out.items():
                a[i, : len(seqs[i])] = d[k]
        x = out.pop("ids")
        return pad_batch(x, lengths, out)

    def rows(self, out: torch.Tensor, batch: Batch) -> torch.Tensor:
        return out[batch["mask"].to(out.device)]

    def row_labels(self, batch: Batch) -> torch.Tensor:
        return batch["y"][batch["mask"]]

    def row_loss_mask(self, batch: Batch) -> torch.Tensor | None:
        """(n,) bool: rows whose prediction carries loss (assistant tokens of a conversation), or None = all."""
        return batch["loss_mask"][batch["mask"]] if "loss_mask" in batch else None

    def row_arrays(self, batch: Batch) -> dict[str, torch.Tensor]:
        m = batch["mask"]
        out = {"tokens": batch["x"][m].to(torch.int32)}
        if "chars" in batch:
            out["char_end"] = batch["chars"][m].to(torch.int32)
        if "loss_mask" in batch:
            out["loss_mask"] = batch["loss_mask"][m].to(torch.uint8)
        return out

    def sample_labels(self, batch: Batch) -> None:
        return None  # a window's labels are its own next tokens, kept in the store's tokens

    def num_rows(self, batch: Batch) -> torch.Tensor:
        return batch["lengths"]


def pad_batch(x: np.ndarray, lengths: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> Batch:
    """x (B, T) token ids right-padded with anything, lengths (B,), extra: optional (B, T) "chars" (token end
    offsets) and "loss" (loss mask) -> the sequence batch (see collate). With chars, `char_len` (B, T) is the
    number of characters of each position's label token (0 without a label): per-character metrics."""
    extra = extra or {}
    T = x.shape[1]
    pos = np.arange(T)[None, :]
    mask = pos < lengths[:, None]
    x = np.where(mask, x, 0).astype(np.int64)
    y = np.full(x.shape, -1, np.int64)
    y[:, :-1] = np.where(pos[:, 1:] < lengths[:, None], x[:, 1:], -1)
    batch = {"x": torch.from_numpy(x), "mask": torch.from_numpy(mask), "lengths": torch.from_numpy(lengths)}
    if "loss" in extra:
        keep = (extra["loss"] > 0) & mask
        y = np.where(keep, y, -1)
        batch["loss_mask"] = torch.from_numpy(keep)
    if "chars" in extra:
        c = np.where(mask, extra["chars"], 0).astype(np.int64)
        n = np.zeros_like(c)
        n[:, :-1] = np.where(y[:, :-1] >= 0, c[:, 1:] - c[:, :-1], 0)
        batch["chars"], batch["char_len"] = torch.from_numpy(c), torch.from_numpy(n)
    batch["y"] = torch.from_numpy(y)
    return batch


KINDS = {"classification": Classification, "sequence": Sequence}


def kind_for(name: str, num_classes: int):
    return KINDS[name](num_classes)
