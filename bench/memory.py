"""Peak RSS benchmark: each stage of a `kd run` in its own child process, at 1x, 10x and 100x the dataset size.

    .venv/bin/python -m bench.memory                         # 1x = 22,000 samples of 1024 float32 (90 MB), 10x, 100x
    .venv/bin/python -m bench.memory --scales 1 10 --dim 2048

Dataset: tests/lazy_data.py's `lazy_dataset`, generated from the sample index and holding nothing, so a stage's
peak RSS is what the pipeline itself keeps, never the data (100x = 9 GB of inputs, more than any stage may
hold). Splits at scale s: train 2,000 s (labelled), transfer 18,000 s, test 2,000 s. Teacher: MLP dim-32-10,
student: MLP dim-16-10 (small, so the models do not hide the pipeline's own memory). Every stage runs as
`kd run pipeline.yaml --set … --stage NAME` in a child process (PYTHONPATH = the repository, OMP_NUM_THREADS=1)
whose peak RSS (`ru_maxrss` from `os.wait4`, in a small launcher: tests/lazy_data.py says why) is recorded: prepare_data, train_teacher (20 steps), the cache pass
(cache_teacher: every sample through the teacher into the store) and the student stage (train_student:
`--steps` steps from the store, inputs fetched by sample id). Goal (issue 11): flat — the cache pass and the
student stage at 100x within a few MB of 1x (the only per-sample state is ~1 byte per store sample while
samples.parquet is checked, and an epoch's permutation of the labelled split: 8 bytes per labelled sample).
Run folders under bench/out/memory/.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from bench.common import PIPELINE, ROOT
from tests.lazy_data import peak_rss_mb as child_peak_rss_mb

KD = str(Path(sys.executable).with_name("kd"))
BASE = {"train": 2_000, "transfer": 18_000, "test": 2_000}
STAGES = ("prepare_data", "train_teacher", "cache_teacher", "train_student")
GOAL_MB = 50  # "flat": the 100x run's peak within this of the 1x run's, for the cache pass and the student stage


def overrides(out: Path, scale: float, dim: int, steps: int) -> list[str]:
    sizes = {k: max(1, int(v * scale)) for k, v in BASE.items()}
    return [
        f"out={out}", "data.factory=tests.lazy_data:lazy_dataset", f"data.kwargs={json.dumps({**sizes, 'dim': dim})}",
        "teacher.factory=kd_pipeline.models:mlp", f"teacher.kwargs={json.dumps({'in_features': dim, 'hidden': [32]})}",
        f"student.kwargs={json.dumps({'in_features': dim, 'hidden': [16]})}",
        "teacher_train.steps=20", f"student_train.steps={steps}", "student_train.batch_size=100", "student_train.checkpoint_every=0",
        "cache.features={}", "cache.chunk_rows=4096", "cache.batch_size=1024",
    ]


def peak_rss_mb(sets: list[str], stage: str) -> float:
    """Runs one stage of `kd run` in a child process -> its peak RSS in MiB. Raises on a failed stage."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    code, out, mb = child_peak_rss_mb([KD, "run", str(PIPELINE), *[a for s in sets for a in ("--set", s)], "--stage", stage, "--force"], env)
    if code != 0:
        raise RuntimeError(f"kd run --stage {stage} failed:\n{out[-3000:]}")
    return mb


def run(root: Path, scales: list[float], dim: int = 1024, steps: int = 200, log=print) -> dict:
    """-> {"scales": {scale: {"samples", "dataset_mb", stage: peak MiB}}, "flat": {stage: MiB growth}}; also
    written to <root>/memory.json. Each scale's run folder is deleted once measured (its store is not needed)."""
    res: dict = {"dim": dim, "steps": steps, "scales": {}}
    for scale in scales:
        out = root / f"x{scale:g}"
        shutil.rmtree(out, ignore_errors=True)
        sets = overrides(out, scale, dim, steps)
        n = sum(max(1, int(v * scale)) for v in BASE.values())
        r = {"samples": n, "dataset_mb": n * dim * 4 / 2**20}
        for stage in STAGES:
            r[stage] = peak_rss_mb(sets, stage)
        res["scales"][f"{scale:g}"] = r
        log(f"x{scale:g}: {n:,} samples ({r['dataset_mb']:,.0f} MiB of inputs): peak RSS "
            + ", ".join(f"{s} {r[s]:,.0f} MiB" for s in STAGES))
        shutil.rmtree(out, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        (root / "memory.json").write_text(json.dumps(res, indent=1))
    first, last = res["scales"][f"{scales[0]:g}"], res["scales"][f"{scales[-1]:g}"]
    res["growth_mb"] = {s: last[s] - first[s] for s in STAGES}
    for s in ("cache_teacher", "train_student"):
        g = res["growth_mb"][s]
        log(f"  {s}: x{scales[-1]:g} - x{scales[0]:g} = {g:+.0f} MiB  {'MET' if g <= GOAL_MB else 'MISSED'} (goal: flat, within {GOAL_MB} MiB)")
    (root / "memory.json").write_text(json.dumps(res, indent=1))
    return res


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", type=float, nargs="+", default=[1, 10, 100])
    ap.add_argument("--dim", type=int, default=1024, help="float32 values per sample")
    ap.add_argument("--steps", type=int, default=200, help="student steps")
    ap.add_argument("--root", type=Path, default=Path("bench/out/memory"))
    a = ap.parse_args(argv)
    run(a.root, a.scales, a.dim, a.steps)


if __name__ == "__main__":
    main()
