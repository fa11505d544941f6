"""Check every split before anything trains, and fingerprint it, in one streamed pass (the prepare_data stage).

Per split, through a DataLoader (`data.num_workers`), one batch at a time: the split is not empty; every item
is an (input, label) pair whose input has the shape and dtype of the split's first (and of the other splits');
float inputs are finite; labels are integers in 0..C-1 or -1/None (NaN and 2.5 are refused); a split that must
carry labels (train, val, test) has at least one. Any fault is one DataError naming the split and sample id.

**Dataset fingerprint** (the store's `dataset.fingerprint`, unchanged since format v1): "sha256:" + hex of, for
each of the store's splits in order, `"{split}|{input shape}|{input dtype}|{label shape}|{label dtype}|"`, the
C-contiguous input bytes, then the int64 label bytes (-1 = unlabelled). It is computed as a stream: inputs are
hashed as they arrive, labels spooled to a temporary file and hashed after them, so memory stays flat.
A dataset that declares a `fingerprint` str attribute (a version or content id it vouches for) is not hashed:
the store records "declared:" + sha256 of the declared values. It is still checked item by item.
"""

from __future__ import annotations

import hashlib
import tempfile

import numpy as np
import torch

from ..errors import DataError
from .arrays import SplitSamples, batch_loader, batches_of, open_split, sequential_keys


def _check_batch(name: str, batch: dict, ref: tuple | None) -> tuple:
    x, sid = batch["x"], batch["sample_id"]
    got = (tuple(x.shape[1:]), x.dtype)
    if ref is not None and got != ref[1:]:
        raise DataError(f"data: split {name!r} sample {int(sid[0])}: input {got[0]} {str(got[1]).removeprefix('torch.')} differs from "
                        f"{ref[1]} {str(ref[2]).removeprefix('torch.')} of split {ref[0]!r}'s first sample")
    if x.is_floating_point():
        bad = ~torch.isfinite(x.flatten(1)).all(dim=1)
        if bad.any():
            raise DataError(f"data: split {name!r} sample {int(sid[int(bad.nonzero()[0, 0])])}: input has NaN or infinite values")
    return ref if ref is not None else (name, *got)


def _check_deterministic(name: str, ds, kind, batch: dict) -> None:
    """The first batch read a second time must be the same bytes: a dataset that augments at random inside
    __getitem__ gives each read another input, and a cached target would belong to none of them."""
    again = SplitSamples([ds], [name], kind).__getitems__((np.zeros(len(batch["sample_id"]), np.int64), batch["sample_id"]))["x"]
    differ = (again != batch["x"]).flatten(1).any(dim=1)
    if differ.any():
        j = int(batch["sample_id"][int(differ.nonzero()[0, 0])])
        raise DataError(f"data: split {name!r} sample {j}: reading it twice gave two different inputs (random augmentation inside the "
                        "dataset?). Cached targets belong to fixed inputs: keep the dataset deterministic and let the pipeline "
                        "augment with cache.views, which stores each augmented view's target (docs/distillation-types.md)")


def scan_splits(data_cfg, kind, store_splits: list[str], labelled_splits: list[str], batch_size: int = 1024) -> dict:
    """Checks `store_splits` (in that order) and then the rest of `labelled_splits` -> the data summary:
    {"splits": {name: {samples, input_shape, input_dtype, labelled}}, "store_splits", "fingerprint"}.
    Raises DataError naming split and sample at the first fault."""
    names = list(dict.fromkeys([*store_splits, *labelled_splits]))
    datasets = {n: open_split(data_cfg, n) for n in names}
    declared = [getattr(datasets[n], "fingerprint", None) for n in store_splits]
    hashing = not all(isinstance(d, str) for d in declared)
    total = hashlib.sha256()
    splits, ref = {}, None
    for name in names:
        ds = datasets[name]
        n = len(ds)
        if n == 0:
            raise DataError(f"data: split {name!r} is empty ({data_cfg.factory} returned no samples)")
        feed = hashing and name in store_splits
        labelled = 0
        with tempfile.SpooledTemporaryFile(max_size=16 << 20) as labels:
            loader = batch_loader(SplitSamples([ds], [name], kind), sequential_keys([n], [0], batch_size), data_cfg.num_workers)
            for i, batch in enumerate(batches_of(loader)):
                ref = _check_batch(name, batch, ref)
                y = batch["y"].numpy().astype(np.int64)
                labelled += int((y >= 0).sum())
                x = np.ascontiguousarray(batch["x"].numpy())
                if i == 0:
                    _check_deterministic(name, ds, kind, batch)
                if feed and i == 0:
                    total.update(f"{name}|{(n, *x.shape[1:])}|{x.dtype}|{(n,)}|int64|".encode())
                if feed:
                    total.update(memoryview(x).cast("B"))
                    labels.write(y.tobytes())
            if feed:
                labels.seek(0)
                for chunk in iter(lambda: labels.read(1 << 20), b""):
                    total.update(chunk)
        if name in labelled_splits and labelled == 0:
            raise DataError(f"data: split {name!r} has no labelled sample (every label is -1 or None); it needs labels")
        splits[name] = {"samples": n, "input_shape": list(ref[1]), "input_dtype": str(ref[2]).removeprefix("torch."), "labelled": labelled}
    fingerprint = "sha256:" + total.hexdigest() if hashing else "declared:" + hashlib.sha256("|".join(declared).encode()).hexdigest()
    return {"splits": splits, "store_splits": list(store_splits), "fingerprint": fingerprint}
