"""What `kd run` prints when it ends: one table with the results and where the time went.

    teacher                  93.53% test accuracy
    KD student               74.08% test accuracy
    baseline (hard labels)   60.53% test accuracy
    KD gain                  +13.55 points (KD student − baseline)
    store                    11.2 MiB on disk: 30,000 rows × 390 B/row
    prepare_data             2.1 s
    train_teacher            up to date (skipped)
    …
    report                   runs/mnist1d/report.md

Figures come from <out>/metrics.json (the evaluate stage's), the store's manifest and its files. A sequence
pipeline's headline figure is perplexity (next-token accuracy beside it). A pipeline without a teacher shows
the teacher's accuracy measured from the store's test-split targets (metrics.json "from_store").
The names and formats here are the report's and the sweep's too (kd_pipeline/report.py, sweep.py).
"""

from __future__ import annotations

import json
from pathlib import Path

NAMES = {"teacher": "teacher", "student": "KD student", "baseline": "baseline (hard labels)"}


def display_name(model: str) -> str:
    return NAMES.get(model, model)


def per_char(metrics: dict) -> bool:
    """Whether the run's models read different tokenizers (a cross-tokenizer student): per-token perplexities
    then do not compare, nats per character do."""
    return bool(metrics.get("cross_tokenizer"))


def headline(kind: str, r: dict, split: str = "", chars: bool = False) -> str:
    """One model's figure on a split: accuracy (classification), perplexity + accuracy (sequence), nats per
    character first when the models' tokenizers differ (chars)."""
    on = f"{split} " if split else ""
    if kind == "sequence" and chars:
        return (f"{r['nats_per_char']:.3f} nats/char on {split or 'the split'} (per-token perplexity {r['perplexity']:.2f} "
                f"over its own tokenizer's tokens: not comparable across tokenizers)")
    if kind == "sequence":
        return f"{on}perplexity {r['perplexity']:.2f} (next-token accuracy {100 * r['accuracy']:.2f}%)"
    return f"{100 * r['accuracy']:.2f}% {on}accuracy"


def kd_gain(kind: str, student: dict, baseline: dict, chars: bool = False) -> str:
    """KD student vs baseline: points of accuracy, or the change of perplexity (lower is better), or of nats per
    character when the models' tokenizers differ (chars)."""
    if kind == "sequence" and chars:
        d = student["nats_per_char"] - baseline["nats_per_char"]
        return f"{d:+.3f} nats/char (KD student − baseline, lower is better)"
    if kind == "sequence":
        d = student["perplexity"] - baseline["perplexity"]
        return f"perplexity {d:+.2f} ({100 * d / baseline['perplexity']:+.1f}%; KD student − baseline, lower is better)"
    return f"{100 * (student['accuracy'] - baseline['accuracy']):+.2f} points of accuracy (KD student − baseline)"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def manifest_bytes_per_row(m) -> int:
    """Every array a store row holds (targets, features, input tokens, view seeds), in bytes."""
    import numpy as np

    return sum(int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize for shape, dtype in m.array_specs().values())


def store_line(path) -> str | None:
    """'11.2 MiB on disk: 30,000 rows × 390 B/row' for the store at path, or None when there is none."""
    from .inspect import size_on_disk
    from .store.reader import peek_manifest

    m = peek_manifest(path)
    if m is None:
        return None
    unit = "tokens" if m.kind == "sequence" else "rows"
    state = "" if m.complete else " (incomplete)"
    return f"{human_bytes(size_on_disk(path))} on disk{state}: {m.num_rows:,} {unit} × {manifest_bytes_per_row(m):,} B/{unit[:-1]}"


def summary_rows(cfg, timings: list[dict]) -> list[tuple[str, str]]:
    """(label, value) rows of the run summary. timings: run_pipeline's per-stage records."""
    rows: list[tuple[str, str]] = []
    out = cfg.out_dir
    metrics = _metrics(out / "metrics.json")
    evaluated = any(t["stage"] == "evaluate" and t["status"] != "not asked" for t in timings)
    if metrics is not None:
        kind, split = metrics["kind"], metrics["test_split"]
        old = "" if evaluated else " (from an earlier evaluate)"
        models = metrics["models"]
        if "teacher" not in models and (metrics.get("from_store") or {}).get("split") == split:
            fs = metrics["from_store"]
            rows.append(("teacher", f"{100 * fs['teacher']['accuracy']:.2f}% {split} accuracy, from the store's targets (no teacher in this pipeline){old}"))
        for name, r in models.items():
            if split in r:
                rows.append((display_name(name), headline(kind, r[split], split, per_char(metrics)) + old))
        if "student" in models and "baseline" in models:
            rows.append(("KD gain", kd_gain(kind, models["student"][split], models["baseline"][split], per_char(metrics))))
    else:
        rows.append(("results", "none yet: the evaluate stage has not run in this folder"))
    from .student import student_store

    path = student_store(cfg)  # distill.teachers: the ensemble the student reads, not the first teacher's store
    store = store_line(path)
    rows.append(("store", f"{store} ({path})" if store else f"none at {path}"))
    total = 0.0
    for t in timings:
        if t["status"] == "ran":
            total += t["seconds"]
            rows.append((t["stage"], _seconds(t["seconds"])))
        else:
            rows.append((t["stage"], "up to date (skipped)" if t["status"] == "up to date" else "not asked (--stage)"))
    ran = any(t["status"] == "ran" for t in timings)
    rows.append(("wall time", _seconds(total) + " (the stages that ran)" if ran else "none: no stage ran"))
    report = out / "report.md"
    rows.append(("report", str(report) if report.is_file() else "none yet (written by the evaluate stage, or `kd report`)"))
    return rows


def print_summary(cfg, timings: list[dict], echo=print) -> None:
    """The summary as aligned plain lines (a two-column table that a log file, a pipe or a narrow terminal
    shows whole: nothing is cut to a width)."""
    rows = summary_rows(cfg, timings)
    width = max(len(label) for label, _ in rows)
    echo(f"── kd run: {cfg.out_dir} " + "─" * max(3, 60 - len(str(cfg.out_dir))))
    for label, value in rows:
        echo(f"  {label:<{width}}  {value}")


def _metrics(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    return f"{m}:{sec:02d} ({s:.0f} s)"
