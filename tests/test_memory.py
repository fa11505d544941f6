"""Datasets are streamed, never materialised: the teacher pass and 100 student steps over a lazily generated
dataset of 1.6 GB run in a child process whose peak RSS stays within 100 MB of the same run over a dataset
100 times smaller (and far below the dataset's size). The pipeline itself keeps ~9 bytes per sample at most
(an epoch's permutation of the labelled split; one byte per store sample while samples.parquet is checked)."""

import os
import sys
from pathlib import Path

from tests.conftest import tiny_config, write_config
from tests.lazy_data import peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]
KD = str(Path(sys.executable).with_name("kd"))
DIM = 2048  # float32 values per sample: 8 KiB


def _peak_rss_mb(tmp: Path, train: int, transfer: int, test: int) -> float:
    cfg = tiny_config(tmp / "run", **{
        "data.factory": "tests.lazy_data:lazy_dataset",
        "data.kwargs": {"train": train, "transfer": transfer, "test": test, "dim": DIM},
        "teacher.factory": "kd_pipeline.models:mlp", "teacher.kwargs": {"in_features": DIM, "hidden": [32]},
        "student.kwargs": {"in_features": DIM, "hidden": [16]},
        "teacher_train.steps": 20, "student_train.steps": 100, "student_train.batch_size": 100,
        "cache.chunk_rows": 4096, "cache.features": {}, "cache.batch_size": 1024,
    })
    tmp.mkdir(parents=True)
    y = write_config(tmp / "p.yaml", cfg)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    stages = [a for s in ("prepare_data", "train_teacher", "cache_teacher", "train_student") for a in ("--stage", s)]
    code, out, mb = peak_rss_mb([KD, "run", str(y), *stages], env, cwd=tmp)
    assert code == 0, out
    assert (tmp / "run" / "student.safetensors").is_file()
    return mb


def test_peak_rss_does_not_grow_with_the_dataset(tmp_path):
    small = _peak_rss_mb(tmp_path / "small", 200, 1800, 200)  # 16 MB of inputs
    large = _peak_rss_mb(tmp_path / "large", 20_000, 180_000, 2_000)  # 1.6 GB of inputs
    print(f"peak RSS: {small:.0f} MiB (16 MB dataset), {large:.0f} MiB (1.6 GB dataset)")
    assert large < small + 100 and large < 1000, (small, large)
