"""The benchmarks run end to end at their smallest size, so they cannot rot silently (figures: bench/)."""

from __future__ import annotations

import math

import pytest
import torch

from bench import quality, reading, student_step, teacher_pass

TINY = [
    "data.kwargs.num_samples=2000",  # train 400, transfer 1200, test 400: the conftest tiny data
    "data.kwargs.labelled=400",
    "data.kwargs.seed=7",
    "teacher.kwargs.channels=8",
    "student.kwargs.hidden=[16]",
    "cache.chunk_rows=256",
]


@pytest.fixture(autouse=True)
def _one_thread():
    # The benchmarks' default (bench.common.apply_threads); restored so other tests keep theirs.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _ratio_ok(x: float) -> bool:
    return math.isfinite(x) and x > 0


def test_speed_benchmarks_smallest(tmp_path):
    r = teacher_pass.run({"tiny": []}, rounds=1, sets=TINY, log=lambda s: None)
    assert _ratio_ok(r["tiny"]["ratio"]) and len(r["tiny"]["rates"]["cache pass"]) == 1
    s = student_step.run(tmp_path / "store", steps=3, rounds=1, sets=TINY, log=lambda s: None)
    assert _ratio_ok(s["cached/hard"]) and _ratio_ok(s["cached/online"])
    g = reading.run(tmp_path / "store", passes=0.2, rounds=1, sets=TINY, log=lambda s: None)
    assert _ratio_ok(g["stream/memmap"]) and _ratio_ok(g["batches/memmap_inputs"])


def test_quality_benchmark_smallest(tmp_path):
    sets = [*TINY, "teacher_train.steps=5", "student_train.steps=5"]
    res = quality.run(tmp_path, seeds=[0], cached={"cached k=3": (3, [], [], "")}, sets=sets, log=lambda s: None)
    assert set(res["runs"]) == {"baseline", "cached k=3", "online"}
    assert all(0.0 <= acc <= 1.0 for by_seed in res["runs"].values() for acc in by_seed.values())
    lines = []
    quality.report(res, log=lines.append)
    assert any(line.startswith("cached k=3 - online") for line in lines)
    assert (tmp_path / "quality.json").is_file() and (tmp_path / "kd-k3-s0" / "student.safetensors").is_file()
