"""MNIST-1D (Greydanus 2020), generated offline by the `mnist1d` package.

One generation of `num_samples` sequences (length 40) with the package's default arguments and `seed`
gives the package's own train/test split (80/20). We keep its test part as `test`, the first `labelled` of
its train part as `train` (labelled), and the rest of its train part as `transfer` with labels hidden
(-1): inputs that only the teacher labels. At num_samples=30000: train 4000, transfer 20000, test 6000.

Generation takes ~15 s at 30,000 samples, so the arrays are kept in an .npz (no pickle) under
$KD_DATA_CACHE (default ~/.cache/kd-pipeline), keyed by the arguments.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from .arrays import ArrayDataset

SPLITS = ("train", "transfer", "test")


def _cache_dir() -> Path:
    return Path(os.environ.get("KD_DATA_CACHE", Path.home() / ".cache" / "kd-pipeline"))


def _generate(num_samples: int, seed: int) -> dict[str, np.ndarray]:
    path = _cache_dir() / f"mnist1d-n{num_samples}-s{seed}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    d = make_dataset(args)
    arrays = {
        "x": d["x"].astype(np.float32),
        "y": d["y"].astype(np.int64),
        "x_test": d["x_test"].astype(np.float32),
        "y_test": d["y_test"].astype(np.int64),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # atomic: concurrent generators never see a half-written file
    return arrays


def mnist1d(split: str, num_samples: int = 30000, labelled: int = 4000, seed: int = 42) -> ArrayDataset:
    """A split of MNIST-1D as (input float32 (40,), label int64); `transfer` labels are -1."""
    if split not in SPLITS:
        raise DataError(f"data.factory: mnist1d has splits {SPLITS}, not {split!r}")
    d = _generate(num_samples, seed)
    n_train = len(d["x"])
    if not 0 < labelled <= n_train:
        raise DataError(f"data.kwargs.labelled: must be in 1..{n_train} for num_samples={num_samples}, got {labelled}")
    if split == "test":
        return ArrayDataset(d["x_test"], d["y_test"])
    if split == "train":
        return ArrayDataset(d["x"][:labelled], d["y"][:labelled])
    x = d["x"][labelled:]
    return ArrayDataset(x, np.full(len(x), -1, dtype=np.int64))
