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


# Runs in a small Python process that launches the command and reports the command's own peak RSS. Why not
# os.wait4 on a child of the caller: Linux's ru_maxrss of a forked child counts the pages it shared with its parent
# before exec, so a child of a 1 GB pytest process reports >= 1 GB whatever it does (measured: 1,059 MiB for a
# stage that peaks at 450 MiB). Launched from this ~10 MB wrapper, the figure is the command's.
_WRAPPER = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:]); _, s, u = os.wait4(p.pid, 0); "
            "print(f'peak-rss-kib={u.ru_maxrss}'); sys.exit(os.waitstatus_to_exitcode(s))")


def peak_rss_mb(cmd: list[str], env: dict, cwd=None) -> tuple[int, str, float]:
    """Runs `cmd` to its end -> (exit code, its stdout + stderr, its peak RSS in MiB; Linux)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], env=env, cwd=cwd, capture_output=True, text=True)
    out, _, kib = r.stdout.rpartition("peak-rss-kib=")
    return r.returncode, out + r.stderr, int(kib) / 1024
