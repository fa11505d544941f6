"""Processes benchmark: rows/s of the teacher pass and of the DDP student with 2 torchrun processes ÷ 1 process
(CPU, one thread each), measured inside the stages, the two alternated over rounds.

    .venv/bin/python -m bench.processes                  # both parts, pipeline.yaml's and a heavier model, 5 rounds
    .venv/bin/python -m bench.processes --only pass --rounds 7

Every measurement is a real `torchrun --nproc_per_node=N kd run pipeline.yaml --set … --stage …`, N = 1 or 2,
otherwise the same command (c10d rendezvous on 127.0.0.1 at a free port, gloo, GLOO_SOCKET_IFNAME=lo,
OMP_NUM_THREADS=1 in every process). Each round runs N = 1 and N = 2 (order flipped every round); the round's
ratio is rows/s with 2 ÷ rows/s with 1; the median and the range over rounds are reported with the 1-minute
load average before each round (the machine is shared: the figures move with it).
- teacher pass: `--stage cache_teacher` into a fresh store each time (rank r writes blocks b % N == r).
  rows/s = the stage's own timing line: rows written ÷ seconds from the start of the pass until every rank has
  finished. Interpreter start, imports, rendezvous, data summary, teacher load and finalize are excluded.
- student: `--stage train_student` (DistributedDataParallel over gloo; the global batch split between ranks)
  from one store made beforehand. rows/s = steps × global batch ÷ the training loop's own time (`time_s` of
  the last point of <out>/logs/train_student.jsonl: from the loop's first batch to its last step; start-up,
  store checks and the final save excluded; checkpoint_every 0).
Variants: pipeline.yaml's teacher (32 ch) and student (MLP 100-100, global batch 100), and heavier ones (256-ch
teacher; 1024-wide student at global batch 100 and 1000) where the model's arithmetic, not per-batch overhead
or the per-step all-reduce of the gradients, dominates.
Goals (issue 11): teacher pass >= 1.8, DDP student >= 1.6. Run folders under bench/out/processes/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
from pathlib import Path

from bench.common import PIPELINE, pipeline_store, verdict

KD = str(Path(sys.executable).with_name("kd"))
GOALS = {"pass": 1.8, "student": 1.6}
PASS_VARIANTS = {"pipeline teacher (32 ch)": [], "256-ch teacher": ["teacher.kwargs.channels=256"]}
WIDE = ["student.kwargs.hidden=[1024, 1024]"]
STUDENT_VARIANTS = {  # label -> (overrides, fraction of --steps)
    "pipeline student (MLP 100-100)": ([], 1.0),
    "1024-wide student": (WIDE, 0.1),
    "1024-wide student, global batch 1000": ([*WIDE, "student_train.batch_size=1000"], 0.02),  # gradients' all-reduce amortised
}
EXIT_CRASHES: list[str] = []  # runs whose stage finished but whose process then died (reported, not hidden)
PASS_LINE = re.compile(r"cache_teacher: teacher pass: (\d+) rows in ([0-9.]+) s, (\d+) process")


def torchrun(nproc: int, sets: list[str], stage: str) -> str:
    """`torchrun --nproc_per_node=nproc kd run pipeline.yaml --set … --stage stage --force` on loopback -> output."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1", "--rdzv_backend=c10d",
           f"--rdzv_endpoint=127.0.0.1:{port}", KD, "run", str(PIPELINE), *[a for s in sets for a in ("--set", s)], "--stage", stage, "--force"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    out = r.stdout + r.stderr
    if r.returncode != 0:
        if f"{stage}: done in" not in out:
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        # the stage finished (its timing is in) and a process died on the way out: kept, and said
        EXIT_CRASHES.append(f"{stage}, {nproc} process(es): exit code {r.returncode} after '{stage}: done': "
                            + " | ".join(ln for ln in out.splitlines() if "terminate" in ln or "exitcode" in ln)[:300])
        print(f"    warning: {EXIT_CRASHES[-1]}", flush=True)
    return out


def pass_rate(nproc: int, sets: list[str], store: Path) -> float:
    """Teacher pass rows/s with nproc processes into a fresh store at `store`."""
    shutil.rmtree(store, ignore_errors=True)
    out = torchrun(nproc, [*sets, f"cache.path={store}"], "cache_teacher")
    m = PASS_LINE.search(out)
    if m is None or int(m.group(3)) != nproc:
        raise RuntimeError(f"no teacher-pass timing line for {nproc} process(es) in:\n{out[-3000:]}")
    shutil.rmtree(store, ignore_errors=True)
    return int(m.group(1)) / float(m.group(2))


def student_rate(nproc: int, sets: list[str], out_dir: Path, steps: int, batch: int) -> float:
    """DDP student rows/s with nproc processes: steps x global batch / the loop's time_s."""
    torchrun(nproc, [*sets, f"student_train.steps={steps}", f"student_train.log_every={steps}", "student_train.checkpoint_every=0"], "train_student")
    last = json.loads((out_dir / "logs" / "train_student.jsonl").read_text().splitlines()[-1])
    return steps * batch / last["time_s"]


def alternate_processes(rate, rounds: int, log) -> dict:
    """rate(nproc) -> rows/s, for nproc 1 and 2 in turn (order flipped every round) -> per-round figures."""
    rates: dict[int, list[float]] = {1: [], 2: []}
    load = []
    for r in range(rounds):
        load.append(os.getloadavg()[0])
        for n in (1, 2) if r % 2 == 0 else (2, 1):
            rates[n].append(rate(n))
        log(f"    round {r + 1}: load {load[-1]:.2f}, 1 process {rates[1][-1]:,.0f} rows/s, 2 processes {rates[2][-1]:,.0f} rows/s, "
            f"ratio {rates[2][-1] / rates[1][-1]:.3f}")
    ratios = [b / a for a, b in zip(rates[1], rates[2])]
    return {"ratio": statistics.median(ratios), "ratios": ratios, "rates": rates, "load": load}


def run(root: Path, rounds: int, parts=("pass", "student"), steps: int = 2000, sets: list[str] = (), log=print,
        pass_variants: dict = PASS_VARIANTS, student_variants: dict = STUDENT_VARIANTS) -> dict:
    """-> {part: {variant: {"ratio", "ratios", "rates", "load"}}}; also written to <root>/processes.json."""
    res: dict = {}
    for part in parts:
        variants = pass_variants if part == "pass" else student_variants
        for label, v in variants.items():
            extra, scale = (v, 1.0) if part == "pass" else v
            out_dir = root / re.sub(r"\W+", "-", f"{part}-{label}").strip("-")
            s = [*sets, *extra, f"out={out_dir}"]
            cfg = pipeline_store(out_dir, *sets, *extra)  # teacher checkpoint, data summary, the student's store
            if part == "pass":
                fn = lambda n: pass_rate(n, s, out_dir / "pass-store")  # noqa: E731
                what = f"teacher {cfg.teacher.kwargs}, batch {cfg.cache.batch_size}, {cfg.cache.chunk_rows}-row blocks"
            else:
                n_steps = max(1, int(steps * scale))
                fn = lambda n: student_rate(n, s, out_dir, n_steps, cfg.student_train.batch_size)  # noqa: E731
                what = f"student {cfg.student.kwargs}, global batch {cfg.student_train.batch_size}, {n_steps} steps"
            log(f"{part}: {label}: {what}, {rounds} rounds")
            r = alternate_processes(fn, rounds, log)
            log(f"  2 processes / 1 = {r['ratio']:.3f} (median; range {min(r['ratios']):.3f}-{max(r['ratios']):.3f}; "
                f"load {min(r['load']):.1f}-{max(r['load']):.1f})  {verdict(r['ratio'], GOALS[part])}")
            res.setdefault(part, {})[label] = r
            res["exit_crashes"] = EXIT_CRASHES
            root.mkdir(parents=True, exist_ok=True)
            (root / "processes.json").write_text(json.dumps(res, indent=1))
    return res


def main(argv: list[str] | None = None) -> None:
    from bench.common import apply_threads, bench_args

    ap = bench_args(__doc__)
    ap.add_argument("--only", choices=["pass", "student"], action="append", help="run only this part (repeatable)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2000, help="student steps per run (the 1024-wide student: a tenth)")
    ap.add_argument("--root", type=Path, default=Path("bench/out/processes"))
    a = ap.parse_args(argv)
    apply_threads(a)  # the in-process setup (store for the student); every torchrun process has one thread
    run(a.root, a.rounds, a.only or ("pass", "student"), a.steps, a.sets)


if __name__ == "__main__":
    main()
