"""Datasets and models with the faults users bring (tests/test_data_faults.py): each factory wraps real
MNIST-1D data or a real model and breaks one thing, as a user's own code would."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from kd_pipeline.data.arrays import ArrayDataset
from kd_pipeline.data.mnist1d import mnist1d
from kd_pipeline.models import mlp

ARGS = {"num_samples": 2000, "labelled": 400, "seed": 7}


class ItemDataset(torch.utils.data.Dataset):
    """MNIST-1D items one by one (a plain map-style dataset, not arrays), with optional faults."""

    def __init__(self, split: str, short_at: int | None = None, label_at: int | None = None, label=None):
        self.base = mnist1d(split, **ARGS)
        self.short_at, self.label_at, self.bad_label = short_at, label_at, label

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        if i == self.short_at:
            x = x[:-1]  # one input of 39 values among 40
        if i == self.label_at:
            y = self.bad_label
        return x, y


def ragged(split: str):
    return ItemDataset(split, short_at=57 if split == "transfer" else None)


def label_out_of_range(split: str):
    return ItemDataset(split, label_at=123 if split == "train" else None, label=10)


def nan_labels(split: str):
    d = mnist1d(split, **ARGS)
    y = d.labels.numpy().astype(np.float64)
    if split == "train":
        y[31] = np.nan
    return ArrayDataset(d.inputs, y)


def unlabelled_train(split: str):
    d = mnist1d(split, **ARGS)
    return ArrayDataset(d.inputs, np.full(len(d), -1) if split == "train" else d.labels)


def empty_transfer(split: str):
    d = mnist1d(split, **ARGS)
    return ArrayDataset(d.inputs[:0], d.labels[:0]) if split == "transfer" else d


def nan_inputs(split: str):
    d = mnist1d(split, **ARGS)
    x = d.inputs.clone()
    if split == "transfer":
        x[640, 3] = float("nan")
    return ArrayDataset(x, d.labels)


def raising(split: str):
    raise RuntimeError("cannot open /data/images: no such directory")


def raising_item(split: str):
    class D(ItemDataset):
        def __getitem__(self, i):
            if i == 77:
                raise OSError("corrupt file train/00077.png")
            return super().__getitem__(i)

    return D(split)


class Explodes(nn.Module):
    """A real MLP whose eval-mode output becomes inf for inputs with a large first value (an overflow in a
    user's inference path: training is unaffected, the teacher pass is not)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.net = mlp(num_classes, 40, (16,))

    def forward(self, x):
        z = self.net(x)
        return z if self.training else torch.where(x[:, :1] > 2.5, torch.full_like(z, float("inf")), z)


def exploding_teacher(num_classes: int):
    return Explodes(num_classes)


def raising_model(num_classes: int):
    raise ValueError("unknown depth 51")


def wide_student(num_classes: int):
    return mlp(num_classes + 4, 40, (16,))  # 14 outputs for 10 classes


def narrow_student(num_classes: int):
    return mlp(num_classes - 1, 40, (16,))  # 9 outputs for 10 classes
