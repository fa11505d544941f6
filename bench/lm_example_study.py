"""Why the LM example's KD student lost to its hard-label twin, and which settings make it win (issue 10.2).

Each variant is `examples/lm/pipeline.yaml` with `--set` overrides (all the keys the study varies, so a variant
means the same thing whatever the file says today), run by the real CLI into bench/out/lm_example_study/<name>:
  1. `kd run CONFIG --set out=DIR <variant>`: every stage, the first seed (teacher, store and both students);
  2. per further seed s: the same command with `--set seed=s --stage train_student --stage train_baseline
     --stage evaluate`: both students again with seed s, from the first seed's teacher and store (student noise);
  3. per `--option` and seed: the same as 2, plus the option's sets. An option that only changes `distill.*`
     leaves that seed's baseline up to date (skipped), so it costs one KD student and an evaluation.
Only the loss differs between the two students of a row: same model, steps, batch, lr, data and seed.

One JSON line per evaluation -> bench/out/lm_example_study.jsonl: variant, option, seed, validation and test
perplexity / cross-entropy of teacher, KD student and baseline, the stages' seconds, the wall time of the
command, the load average before and after.

Run: OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m bench.lm_example_study --variants main,example
         --seeds 0,1 [--option main:window32=distill.shuffle_window=32]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path("bench/out/lm_example_study")
OUT = Path("bench/out/lm_example_study.jsonl")

# the settings of examples/lm/pipeline.yaml before issue 10.2 (KD student val ppl 1052 vs hard labels 889)
MAIN = {
    "data.kwargs.max_bytes": 600000,
    "teacher_train.steps": 250, "teacher_train.lr": 3.0e-3,
    "student_train.steps": 60, "student_train.lr": 3.0e-3,
    "cache.draws": 32, "cache.top_k": 32, "cache.chunk_rows": 16384,
    "distill.shuffle_window": 4, "distill.alpha": 0.5,
}
VARIANTS = {
    "main": MAIN,
    # lr 1e-3 for teacher and students (3e-3 is constant, without warm-up), the students 100 steps, and 2,048-row
    # blocks with a 16-block window: the KD student draws from the whole train split
    "lr1e-3": {**MAIN, "teacher_train.lr": 1.0e-3, "student_train.steps": 100, "student_train.lr": 1.0e-3,
               "cache.chunk_rows": 2048, "distill.shuffle_window": 16, "cache.draws": 64, "cache.top_k": 64},
    # the same with twice the text (the teacher fits its train split less) and 300 teacher steps
    "example-test5": {**MAIN, "data.kwargs.max_bytes": 1200000, "teacher_train.steps": 300, "teacher_train.lr": 1.0e-3,
                "student_train.steps": 100, "student_train.lr": 1.0e-3, "cache.draws": 64, "cache.top_k": 64,
                "cache.chunk_rows": 2048, "distill.shuffle_window": 16},
}
# examples/lm/pipeline.yaml since issue 10.2: the same with a 1.5% test split (the teacher pass stores every test
# token, and evaluation reads them all from the store: at 5%, 339k tokens, ~100 s of the run); val moves with it
VARIANTS["example"] = {**VARIANTS["example-test5"], "data.kwargs.test_fraction": 0.015}
STUDENTS = ["--stage", "train_student", "--stage", "train_baseline", "--stage", "evaluate"]


def sets(d: dict) -> list[str]:
    """--set arguments; a str value is passed as written (parsed as YAML by kd run, like the command line)."""
    return [a for k, v in d.items() for a in ("--set", f"{k}={v if isinstance(v, str) else json.dumps(v)}")]


def kd_run(config: str, out: Path, over: dict, extra: list[str]) -> dict:
    """One `kd run` (child process, its output to out/kd-run.log) -> wall seconds, stage seconds, load."""
    cmd = [str(Path(sys.executable).with_name("kd")), "run", config, "--set", f"out={out}", *sets(over), *extra]
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    with (out / "kd-run.log").open("a") as f:
        f.write(" ".join(cmd) + "\n" + p.stdout + p.stderr)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    stages = {m[1]: float(m[2]) for m in re.finditer(r"(\w+): done in ([\d.]+) s", p.stdout + p.stderr)}
    return {"command": " ".join(cmd[1:]), "wall_s": round(wall, 1), "stages_s": stages,
            "load": [round(load0, 2), round(os.getloadavg()[0], 2)]}


def scores(out: Path) -> dict:
    models = json.loads((out / "metrics.json").read_text())["models"]
    return {name: {split: {"ppl": round(m[split]["perplexity"], 1), "ce": round(m[split]["cross_entropy"], 4)}
                   for split in ("val", "test")} for name, m in models.items()}


def run(config: str, variants: list[str], seeds: list[int], options: dict[str, list[tuple[str, dict]]],
        root: Path = ROOT, out: Path = OUT, extra: dict | None = None, log=print) -> list[dict]:
    """Every (variant, option, seed) of the study (module docstring) -> its rows, also appended to `out`.
    options: variant -> [(name, {key: value})]. extra: sets applied after the variant's (tests: tiny sizes)."""
    rows = []
    out.parent.mkdir(parents=True, exist_ok=True)
    for variant in variants:
        over, folder = VARIANTS[variant], root / variant
        for seed in seeds:  # seeds outside: an option's baseline is then the same seed's, up to date
            for option, option_sets in [("", {}), *options.get(variant, [])]:
                first = option == "" and seed == seeds[0]
                r = kd_run(config, folder, {**over, **option_sets, **(extra or {}), "seed": seed}, [] if first else STUDENTS)
                row = {"variant": variant, "option": option, "sets": {**over, **option_sets}, "seed": seed, **r,
                       "models": scores(folder)}
                rows.append(row)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                m = row["models"]
                log(f"{variant:13s} {option or '-':10s} seed {seed}: val ppl KD {m['student']['val']['ppl']:7.1f}  "
                    f"hard {m['baseline']['val']['ppl']:7.1f}  teacher {m['teacher']['val']['ppl']:7.1f}  "
                    f"({r['wall_s']} s, load {r['load']})")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="examples/lm/pipeline.yaml")
    ap.add_argument("--variants", default="main,example", help=f"comma-separated, of {list(VARIANTS)}")
    ap.add_argument("--seeds", default="0,1", help="student seeds; the teacher is always the first seed's")
    ap.add_argument("--option", action="append", default=[],
                    help="VARIANT:NAME=KEY=VALUE[,KEY=VALUE]: that variant's students again with these sets")
    a = ap.parse_args()
    options: dict[str, list[tuple[str, dict]]] = {}
    for spec in a.option:
        variant, rest = spec.split(":", 1)
        name, kv = rest.split("=", 1)
        options.setdefault(variant, []).append((name, dict(x.split("=", 1) for x in kv.split(","))))
    run(a.config, a.variants.split(","), [int(s) for s in a.seeds.split(",")], options,
        log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
