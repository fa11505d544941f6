"""The benchmarks run end to end at their smallest size, so they cannot rot silently (figures: bench/)."""

from __future__ import annotations

import math

import pytest
import torch

from bench import pass_parts, quality, reading, student_step, teacher_pass
from bench.common import config

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
    parts = pass_parts.measure(config(*TINY, f"out={tmp_path / 'parts'}"), 1, tmp_path / "parts")
    assert parts["rows"] == 2000 and all(parts[k] > 0 for k in ("layout", "fetch", "forward", "targets", "write", "whole pass"))


def test_quality_benchmark_smallest(tmp_path):
    sets = [*TINY, "teacher_train.steps=5", "student_train.steps=5"]
    res = quality.run(tmp_path, seeds=[0], cached={"cached k=3": (3, [], [], "")}, sets=sets, log=lambda s: None)
    assert set(res["runs"]) == {"baseline", "cached k=3", "online"}
    assert all(0.0 <= acc <= 1.0 for by_seed in res["runs"].values() for acc in by_seed.values())
    lines = []
    quality.report(res, log=lines.append)
    assert any(line.startswith("cached k=3 - online") for line in lines)
    assert (tmp_path / "quality.json").is_file() and (tmp_path / "kd-k3-s0" / "student.safetensors").is_file()


def test_lm_benchmarks_smallest(tmp_path, monkeypatch):
    """The LM benchmarks on a 1-layer teacher of a 320-id vocabulary trained 10 steps (their figures need
    bench/lm_pipeline.yaml's teacher; this checks that every path they call still exists and runs)."""
    import json

    from bench import lm_common, lm_quality, lm_speed, lm_targets
    from kd_pipeline.config import load_config
    from kd_pipeline.runner import run_pipeline
    from tests.conftest import write_config
    from tests.test_lm_pipeline import lm_config

    cfg = lm_config(tmp_path / "run", **{"teacher_train.steps": 10, "cache.top_k": 8, "cache.temperatures": [1.0]})
    y = write_config(tmp_path / "lm.yaml", cfg)
    run_pipeline(load_config(y), only=["prepare_data", "train_teacher"])
    monkeypatch.setattr(lm_common, "PIPELINE", y)
    monkeypatch.chdir(tmp_path)  # the benchmarks write bench/out/*.json under the working directory
    lm_speed.main(3000, 2)
    lm_speed.ids_stream(3000, 1, 2)
    lm_targets.main(500)
    lm_targets.packed_rows(300)
    lm_quality.main(3000, 2, 1)
    out = tmp_path / "bench" / "out"
    speed = json.loads((out / "lm_speed.json").read_text())
    assert all(_ratio_ok(speed[k]) for k in ("teacher_pass_ratio", "student_ratio", "stream_ratio"))
    ids = json.loads((out / "lm_ids_speed.json").read_text())
    assert {int(v) for v in ids["vocabs"]} == {8192, 128_256, 262_144}
    rows = json.loads((out / "lm_ids_targets.json").read_text())["rows"]
    assert all(r["compression_kl"] < 1e-3 for r in rows if r["values"] == "float16")
    quality = json.loads((out / "lm_quality.json").read_text())["results"]
    assert set(quality) == {"hard", "topk8", "topk32", "sampled32", "online"}


def test_lm_example_study_smallest(tmp_path):
    """The example study through real `kd run` processes at tiny sizes: the later seeds and an option reuse the
    first seed's teacher, and an option changing only distill.* leaves the hard-label student as it was."""
    from bench import lm_example_study

    model = "kd_pipeline.lm.model:transformer_lm"
    tiny = {"data.kwargs.max_bytes": 40000, "data.num_classes": 320, "teacher.factory": model, "student.factory": model,
            "teacher.kwargs": {"layers": 1, "dim": 32, "heads": 2, "context": 32},
            "student.kwargs": {"layers": 1, "dim": 16, "heads": 2, "context": 32},
            "teacher_train.steps": 5, "student_train.steps": 3, "cache.chunk_rows": 256, "cache.batch_size": 256,
            "cache.draws": 8, "cache.top_k": 8, "sequence.context": 32, "sequence.recon_tokens": 500,
            "sequence.eval_tokens": 1000, "evaluate.batch_size": 256}
    out = tmp_path / "study.jsonl"
    rows = lm_example_study.run("examples/lm/pipeline.yaml", ["example"], [0, 1], {"example": [("a0.2", {"distill.alpha": 0.2})]},
                                root=tmp_path, out=out, extra=tiny, log=lambda s: None)
    assert [(r["option"], r["seed"]) for r in rows] == [("", 0), ("a0.2", 0), ("", 1), ("a0.2", 1)]
    assert len(out.read_text().splitlines()) == 4 and set(rows[0]["stages_s"]) >= {"train_teacher", "cache_teacher"}
    assert "train_teacher" not in rows[2]["stages_s"] and "train_baseline" in rows[2]["stages_s"]
    assert "train_baseline" not in rows[1]["stages_s"] and "train_baseline" not in rows[3]["stages_s"]
    ppl = [{m: r["models"][m]["val"]["ppl"] for m in ("teacher", "student", "baseline")} for r in rows]
    assert len({p["teacher"] for p in ppl}) == 1  # one teacher
    for a, b in ((0, 1), (2, 3)):  # same seed: the option changed the KD student only
        assert ppl[a]["baseline"] == ppl[b]["baseline"] and ppl[a]["student"] != ppl[b]["student"]


def test_processes_benchmark_smallest(tmp_path):
    """torchrun with 1 and 2 processes, one round: the stages' own timings are found and give rates."""
    from bench import processes

    r = processes.run(tmp_path, 1, steps=20, sets=TINY, log=lambda s: None,
                      pass_variants={"tiny": []}, student_variants={"tiny": ([], 1.0)})
    for part in ("pass", "student"):
        assert _ratio_ok(r[part]["tiny"]["ratio"]) and len(r[part]["tiny"]["rates"][2]) == 1


def test_memory_benchmark_smallest(tmp_path):
    """Every stage in a child process over the lazy dataset at one small scale: a peak RSS per stage."""
    from bench import memory

    r = memory.run(tmp_path, [0.05], dim=64, steps=10, log=lambda s: None)
    assert all(100 < r["scales"]["0.05"][s] < 4000 for s in memory.STAGES) and r["growth_mb"]["cache_teacher"] == 0
    assert (tmp_path / "memory.json").is_file() and not (tmp_path / "x0.05").exists()


def test_threads_benchmark_smallest(tmp_path):
    from bench import threads

    res = threads.run(tmp_path / "run", steps=3, rounds=1, hogs=[0], sets=[*TINY, "teacher_train.steps=5"], log=lambda s: None)
    secs = res["loads"][0]["seconds"]
    assert set(secs) == {"threads 1", "torch default"} and all(len(v) == 1 and v[0] > 0 for v in secs.values())
    assert _ratio_ok(res["loads"][0]["default/1"])
