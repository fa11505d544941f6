"""Where a cached-KD student step spends its time, against a hard-label step (issue 12, performance).

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.kd_step_profile              # pipeline.yaml's student, batch 100
    OMP_NUM_THREADS=1 .venv/bin/python -m bench.kd_step_profile --rounds 7 --steps 1000

Both sides are the stages' own paths, in one process, alternated round by round (docs/benchmarks.md):
- cached KD: `stream.student_batches` over a real store of the default pipeline (made by the cache_teacher
  stage with a freshly initialised teacher: speed does not depend on its weights) -> `objectives.CachedKD`;
- hard labels: `stream.shuffled_batches` over the labelled split -> `objectives.HardLabels`;
each through `training.fit` (Adam, the pipeline's student_train batch and lr). Printed: steps/s of each and
the median over rounds of their per-round ratio (the goal is >= 0.95); then, per step, µs spent fetching
the batch, in the loss module's forward, in backward and in Adam, and the number of torch ops (aten calls
counted by torch.profiler) in each part.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from kd_pipeline.config import TrainConfig, load_config

ROOT = Path(__file__).resolve().parent.parent


def setup(out: Path, sets: list[str]):
    """-> (cfg, {"cached KD": (module, batches), "hard labels": (module, batches)}) on the default pipeline."""
    from kd_pipeline.checkpoint import save_model
    from kd_pipeline.kinds import kind_for
    from kd_pipeline.models import build_model
    from kd_pipeline.objectives import CachedKD, HardLabels
    from kd_pipeline.prepare import open_samples
    from kd_pipeline.runner import run_pipeline
    from kd_pipeline.store import open_store
    from kd_pipeline.stream import shuffled_batches, student_batches

    cfg = load_config(ROOT / "pipeline.yaml", [*sets, f"out={out}"])
    ckpt = cfg.out_dir / "teacher.safetensors"
    if not ckpt.is_file():
        torch.manual_seed(0)
        save_model(build_model(cfg.teacher, cfg.data.num_classes), ckpt, {"factory": cfg.teacher.factory, "kwargs": cfg.teacher.kwargs})
    run_pipeline(cfg, only=["prepare_data", "cache_teacher"])
    store = open_store(cfg.cache_path)
    m = store.manifest
    kind = kind_for(m.kind, m.num_classes)
    bs = cfg.student_train.batch_size
    cached = open_samples(cfg, m.dataset.splits)
    labelled = open_samples(cfg, [cfg.data.train_split])

    def student():
        torch.manual_seed(cfg.seed)  # the same initial weights on both sides
        return build_model(cfg.student, m.num_classes, "student").train()

    used = [f.cached for f in (cfg.distill.feature, cfg.distill.relation) if f is not None]  # as the student stage reads
    kd_batches = lambda skip: student_batches(store, cached, bs, cfg.distill.shuffle_window, cfg.seed, skip=skip,  # noqa: E731
                                              **_accepted(student_batches, features=used, kl_tau=cfg.distill.temperature))
    probe = next(kd_batches(0))
    sides = {
        "cached KD": (CachedKD(student(), kind, cfg.distill, m.features, probe), kd_batches),
        "hard labels": (HardLabels(student(), kind), lambda skip: shuffled_batches(labelled, 0, bs, cfg.seed, skip=skip)),
    }
    return cfg, sides


def _accepted(fn, **kwargs) -> dict:
    """The keyword arguments fn takes (so this script also measures the code before they existed)."""
    import inspect

    return {k: v for k, v in kwargs.items() if k in inspect.signature(fn).parameters}


def ratio(cfg, sides: dict, steps: int, rounds: int) -> dict[str, list[float]]:
    """steps/s of each side through training.fit, alternated (order flipped every round)."""
    from kd_pipeline.training import fit

    train = TrainConfig(steps=steps, batch_size=cfg.student_train.batch_size, lr=cfg.student_train.lr, log_every=steps, checkpoint_every=0)
    rates = {n: [] for n in sides}
    names = list(sides)
    its = {n: batches(0) for n, (_, batches) in sides.items()}  # kept across rounds: the steady state
    for r in range(rounds + 1):  # round 0 warms up (the stream's reader threads, the allocator), not counted
        for n in names if r % 2 == 0 else names[::-1]:
            module = sides[n][0]
            t0 = time.perf_counter()
            fit(module, lambda skip, n=n: its[n], train, f"bench {n}")
            if r:
                rates[n].append(steps / (time.perf_counter() - t0))
    return rates


class OpCount:
    """Counts the aten ops dispatched while active (forward, autograd's backward on this thread, optimizer)."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                counter.n += 1
                return func(*args, **(kwargs or {}))

        self.n, self.mode = 0, Mode


def breakdown(sides: dict, steps: int, lr: float) -> dict[str, dict[str, tuple[float, float]]]:
    """Per side: part -> (µs per step, median; torch ops per step) for fetch / forward + loss / backward / Adam."""
    from contextlib import nullcontext

    out = {}
    for n, (module, batches) in sides.items():
        it = batches(0)
        opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr)
        acc = [torch.zeros((), dtype=torch.float64)]

        def step(times: dict, counts: dict | None = None) -> None:
            def part(name, fn):
                c = OpCount() if counts is not None else None
                t = time.perf_counter()
                with c.mode() if c else nullcontext():
                    got = fn()
                times.setdefault(name, []).append(time.perf_counter() - t)
                if c:
                    counts.setdefault(name, []).append(c.n)
                return got

            batch = part("fetch", lambda: next(it))
            # fit sums the logged parts on the device (one stack, one add): counted with the forward
            def forward():
                loss, parts = module(batch)
                acc[0] = acc[0] + torch.stack([loss.detach(), *parts.values()])
                return loss

            loss = part("forward + loss", forward)
            part("backward", lambda: (opt.zero_grad(set_to_none=True), loss.backward()))
            part("Adam", opt.step)

        for _ in range(50):  # warm-up
            step({})
        times: dict[str, list[float]] = {}
        for _ in range(steps):
            step(times)
        counts: dict[str, list[int]] = {}
        for _ in range(5):
            step({}, counts)
        out[n] = {k: (1e6 * statistics.median(v), statistics.median(counts[k])) for k, v in times.items()}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000, help="optimizer steps per timed call of fit")
    ap.add_argument("--rounds", type=int, default=5, help="alternated rounds; the median ratio is reported")
    ap.add_argument("--out", type=Path, default=Path("bench/out/store"), help="run folder of the benchmark store")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE overrides (as kd run --set)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg, sides = setup(a.out, [*a.sets, "threads=1"])
    rates = ratio(cfg, sides, a.steps, a.rounds)
    r = statistics.median(x / y for x, y in zip(rates["cached KD"], rates["hard labels"]))
    print(f"student {cfg.student.factory} {cfg.student.kwargs}, batch {cfg.student_train.batch_size}, {a.steps} steps x {a.rounds} rounds: "
          + ", ".join(f"{n} {statistics.median(v):,.0f} steps/s" for n, v in rates.items()))
    print(f"  cached KD / hard labels = {r:.3f} (per round: {', '.join(f'{x / y:.3f}' for x, y in zip(rates['cached KD'], rates['hard labels']))}; goal >= 0.95)")
    print("  per step, median µs (torch ops):")
    for n, parts in breakdown(sides, a.steps, cfg.student_train.lr).items():
        print(f"  {n:>12}: " + ", ".join(f"{p} {us:,.0f} ({ops:.0f})" for p, (us, ops) in parts.items())
              + f"; sum {sum(us for us, _ in parts.values()):,.0f} µs ({sum(o for _, o in parts.values()):.0f} ops)")


if __name__ == "__main__":
    main()
