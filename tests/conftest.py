"""Shared fixtures: a tiny but real pipeline (MNIST-1D, CNN teacher, MLP student) in a temp folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

torch_threads = os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session", autouse=True)
def _data_cache(tmp_path_factory):
    # Generated MNIST-1D arrays are shared by all tests of the session, never by the user's cache.
    os.environ["KD_DATA_CACHE"] = str(tmp_path_factory.mktemp("data-cache"))


def tiny_config(out: Path, **over) -> dict:
    cfg = {
        "out": str(out),
        "seed": 0,
        "data": {
            "factory": "kd_pipeline.data.mnist1d:mnist1d",
            "kwargs": {"num_samples": 2000, "labelled": 400, "seed": 7},
            "num_classes": 10,
            "transfer_splits": ["transfer"],
        },
        "teacher": {"factory": "kd_pipeline.models:conv1d_net", "kwargs": {"channels": 8}},
        "student": {"factory": "kd_pipeline.models:mlp", "kwargs": {"in_features": 40, "hidden": [16]}},
        "teacher_train": {"steps": 200, "batch_size": 50, "lr": 1e-2, "log_every": 50},
        "student_train": {"steps": 30, "batch_size": 50, "lr": 1e-3, "log_every": 10},
        "cache": {"top_k": 3, "temperatures": [1.0, 4.0], "chunk_rows": 256, "features": {"penultimate": "body"}},
        "distill": {"alpha": 0.3, "temperature": 4.0},
        "evaluate": {"latency_runs": 5},
    }
    return set_keys(cfg, over)


def set_keys(cfg: dict, over: dict) -> dict:
    """cfg with each dotted key of `over` set (missing sections created); returns cfg."""
    for key, value in over.items():
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture
def tiny(tmp_path) -> Path:
    """Path to a tiny pipeline YAML whose run folder is tmp_path/run."""
    return write_config(tmp_path / "pipeline.yaml", tiny_config(tmp_path / "run"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A tiny pipeline run once end to end for the whole session; returns its pipeline YAML path."""
    from kd_pipeline.config import load_config
    from kd_pipeline.runner import run_pipeline

    d = tmp_path_factory.mktemp("tiny-run")
    p = write_config(d / "pipeline.yaml", tiny_config(d / "run"))
    run_pipeline(load_config(p))
    return p


@pytest.fixture(scope="session")
def zygote():
    """A fork server that starts `kd` processes for crash tests in a second (tests/zygote.py)."""
    from tests.killing import kill_leftovers, start_zygote

    proc = start_zygote()
    yield proc
    kill_leftovers()
    proc.stdin.close()
    proc.wait(timeout=60)


def inputs_in_row_order(cfg, store):
    """The dataset's inputs of every store row, in row order (the rows interleave splits: samples.parquet
    says which sample each row is)."""
    import numpy as np

    from kd_pipeline.prepare import open_samples

    t = store.samples.table().sort_by("row")
    splits = store.manifest.dataset.splits
    codes = np.array([splits.index(s) for s in t["split"].to_pylist()], dtype=np.int64)
    return open_samples(cfg, splits).__getitems__((codes, t["sample_id"].to_numpy()))["x"]
