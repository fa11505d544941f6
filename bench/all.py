"""The classification benchmarks in turn (`make bench`); figures and commands are recorded in docs/benchmarks.md.

    .venv/bin/python -m bench.all            # full: speed (~5 min here), quality over 3 seeds (~15-25 min),
                                             # 2 vs 1 processes (~15 min) and peak RSS at 1x/10x/100x (~10 min)
    .venv/bin/python -m bench.all --quick    # same, but quality with 1000-step runs, 1 seed
    .venv/bin/python -m bench.all --skip-quality --skip-scaling    # the three speed ratios only

One at a time, never in parallel: each speed figure is a ratio of two measurements alternated in one process.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench import memory, processes, quality, reading, remote_reading, student_step, teacher_pass
from bench.common import apply_threads, bench_args


def main(argv: list[str] | None = None) -> None:
    ap = bench_args(__doc__)
    ap.add_argument("--quick", action="store_true", help="quality: 1000 teacher/student steps and one seed")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-scaling", action="store_true", help="skip 2 vs 1 processes and peak RSS at 1x/10x/100x")
    a = ap.parse_args(argv)
    apply_threads(a)
    store = Path("bench/out/store")
    parts = [
        ("1. teacher pass", lambda: teacher_pass.run(teacher_pass.VARIANTS, rounds=5, sets=a.sets)),
        ("2. student step", lambda: student_step.run(store, steps=1000, rounds=5, sets=a.sets)),
        ("2b. student step, 1024-wide MLP student", lambda: student_step.run(store, steps=200, rounds=5, sets=[*a.sets, *student_step.WIDE])),
        ("3. reading", lambda: reading.run(store, passes=4.0, rounds=5, sets=a.sets)),
        ("3b. reading from S3 and HTTP", lambda: remote_reading.run(store, passes=2.0, rounds=5, sets=a.sets)),
    ]
    if not a.skip_quality:
        root = Path("bench/out") / ("quality-quick" if a.quick else "quality")
        seeds = [0] if a.quick else [0, 1, 2]
        sets = (quality.QUICK if a.quick else []) + a.sets
        parts.append(("4. quality", lambda: quality.report(quality.run(root, seeds, sets=sets))))
    if not a.skip_scaling:
        parts.append(("5. 2 vs 1 processes (torchrun)", lambda: processes.run(Path("bench/out/processes"), rounds=5, sets=a.sets)))
        parts.append(("6. peak RSS at 1x, 10x, 100x", lambda: memory.run(Path("bench/out/memory"), [1, 10, 100])))
    for title, fn in parts:
        print(f"\n== {title}")
        t0 = time.perf_counter()
        fn()
        print(f"   ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
