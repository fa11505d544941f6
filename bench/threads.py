"""Torch threads under load: the student stage with `threads: 1` (the default) vs `threads: 0` (torch's own
default, one thread per core), on a machine left as it is and with CPU-bound hogs (`yes > /dev/null`) running.

    .venv/bin/python -m bench.threads                          # 2000 student steps, hogs 0 then 2, 2 rounds
    .venv/bin/python -m bench.threads --steps 8000 --rounds 3  # the full student stage of pipeline.yaml

Each measurement is a real process, `kd run pipeline.yaml --stage train_student --force --set threads=T`,
timed as the runner reports the stage ("train_student: done in X s"); OMP_NUM_THREADS is removed from its
environment so that `threads: 0` really is torch's default. Under each load the two settings alternate,
order flipped every round; the figure is the median over rounds of (seconds at threads 0) / (seconds at 1).
The teacher (500 steps: speed does not depend on its quality) and the store are made once in --out.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import PIPELINE

SETTINGS = {"threads 1": "threads=1", "torch default": "threads=0"}


def kd(args: list[str], env: dict) -> str:
    r = subprocess.run([sys.executable, "-m", "kd_pipeline.cli", "run", str(PIPELINE), *args], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"kd run {' '.join(args)} failed ({r.returncode}): {r.stderr.strip().splitlines()[-1:]}")
    return r.stdout  # the stage lines ("train_student: done in … s")


def run(out: Path, steps: int, rounds: int, hogs: list[int], sets: list[str] = (), log=print) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    base = [f"--set=out={out}", "--set=teacher_train.steps=500", f"--set=student_train.steps={steps}", *(f"--set={s}" for s in sets)]
    kd([*base, "--stage", "train_teacher", "--stage", "cache_teacher"], env)
    result: dict = {"steps": steps, "cores": os.cpu_count(), "loads": {}}
    for n in hogs:
        procs = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(n)]
        try:
            secs: dict[str, list[float]] = {name: [] for name in SETTINGS}
            names = list(SETTINGS)
            for r in range(rounds):
                for name in names if r % 2 == 0 else names[::-1]:
                    load = os.getloadavg()[0]
                    err = kd([*base, "--stage", "train_student", "--force", f"--set={SETTINGS[name]}"], env)
                    secs[name].append(float(re.search(r"train_student: done in ([0-9.]+) s", err).group(1)))
                    log(f"hogs {n}  round {r}  {name:13s}  {secs[name][-1]:7.1f} s  (load average before: {load:.1f})")
        finally:
            for p in procs:
                p.kill()
                p.wait()
        ratio = statistics.median(a / b for a, b in zip(secs["torch default"], secs["threads 1"]))
        result["loads"][n] = {"seconds": secs, "default/1": ratio}
        log(f"hogs {n}: median {statistics.median(secs['threads 1']):.1f} s with threads 1, "
            f"{statistics.median(secs['torch default']):.1f} s with torch's default: {ratio:.2f}x")
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000, help="student steps per measurement")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--hogs", type=int, nargs="+", default=[0, 2], help="`yes` processes running, one load after another")
    ap.add_argument("--out", type=Path, default=Path("bench/out/threads"))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra KEY=VALUE overrides (as kd run --set)")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    run(a.out, a.steps, a.rounds, a.hogs, a.sets)
    print(f"({time.perf_counter() - t0:.0f} s in all)")


if __name__ == "__main__":
    main()
