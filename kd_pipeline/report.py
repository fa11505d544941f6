"""The run report: <out>/report.md and <out>/report.png, written by the evaluate stage and by `kd report RUN`.

What it says, and where each part comes from:
- the headline: teacher, KD student and baseline on the test split, and the KD gain (metrics.json);
- the settings that produced those results: each stage's stamp (<out>/.kd/stamps/<stage>.json keeps the
  config sections the stage ran with; kd_pipeline/runner.py), not the current config, which may have moved
  on; k, temperatures and dtypes from the store's manifest;
- the store: rows, bytes per row (targets, features) and total on disk;
- every model on every evaluated split, and against the teacher's stored targets (metrics.json);
- report.png: validation curves (accuracy, or perplexity for a sequence, vs step: `*_train.eval_every`), each
  loss term on its own axis (the KL term unscaled, its weight in the title), accuracy vs parameters and vs CPU
  latency, and a histogram of the teacher's confidence (top-1 probability) over the store's rows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .config import PipelineConfig
from .curves import curve_split, split_curve
from .evaluation import read_curve, store_lines
from .summary import display_name, headline, human_bytes, kd_gain, manifest_bytes_per_row, per_char

TRAINED = {"teacher": "train_teacher", "student": "train_student", "baseline": "train_baseline"}  # model -> its stage
COLOURS = {"teacher": "tab:gray", "student": "tab:blue", "baseline": "tab:orange"}
BINS = 20  # confidence histogram bins over [0, 1]


def report_run(run: Path) -> Path:
    """`kd report RUN`: the report of a run folder from its metrics.json, logs, stamps and store. Raises KDError
    when the folder has no resolved config or no metrics (the evaluate stage has not run)."""
    from .errors import KDError
    from .export import load_run_config

    cfg = load_run_config(Path(run))
    p = cfg.out_dir / "metrics.json"
    if Path(run).resolve() != cfg.out_dir.resolve():  # a run folder moved or read from elsewhere: its own files
        cfg = cfg.model_copy(update={"out": str(run)})
        p = Path(run) / "metrics.json"
    try:
        metrics = json.loads(p.read_text())
    except OSError:
        raise KDError(f"{p}: missing; run `kd run` first (its evaluate stage writes the metrics the report shows)") from None
    except ValueError as e:
        raise KDError(f"{p}: not JSON ({e})") from None
    return write_report(cfg, metrics)


def write_report(cfg: PipelineConfig, metrics: dict) -> Path:
    """Writes <out>/report.md and <out>/report.png; returns the .md path."""
    out = cfg.out_dir
    curves = {n: read_curve(out / "logs" / f"{stage}.jsonl") for n, stage in TRAINED.items() if n in metrics["models"]}
    store = store_facts(cfg)
    plot(out / "report.png", cfg, metrics, curves, store)
    md = out / "report.md"
    md.write_text("\n".join(markdown(cfg, metrics, curves, store)))
    return md


# ------------------------------------------------------------------------------------------------ facts


def stage_settings(cfg: PipelineConfig, stage: str) -> tuple[dict, str]:
    """The config sections `stage` last ran with (its stamp's), and where they came from."""
    from .runner import read_stamp

    stamp = read_stamp(cfg, stage)
    if stamp is not None and isinstance(stamp.get("values"), dict):
        return stamp["values"], "stamp"
    why = "no stamp" if stamp is None else "the stamp predates recorded settings"
    return cfg.model_dump(mode="json"), f"the current config ({why})"


def store_facts(cfg: PipelineConfig) -> dict | None:
    """The store's manifest, bytes per row, size on disk and the teacher's confidence histogram (at most
    evaluate.confidence_rows rows: whole blocks spread evenly over the store), or None without a complete store."""
    from .inspect import size_on_disk, teacher_probabilities
    from .store import open_store
    from .store.reader import peek_manifest

    m = peek_manifest(cfg.cache_path)
    if m is None or not m.complete:
        return None
    per_row = manifest_bytes_per_row(m)
    features = sum(int(np.prod(f.shape)) * np.dtype(f.dtype).itemsize for f in m.features.values())
    # at temperatures[0] (the teacher's own confidence) and at the student's temperature (what it distils from)
    taus = [0] + [i for i, t in enumerate(m.temperatures) if i and abs(t - cfg.distill.temperature) <= 1e-6 * max(1.0, t)]
    store = open_store(cfg.cache_path)
    try:
        want = min(m.num_blocks, max(1, math.ceil(cfg.evaluate.confidence_rows / m.chunk_rows)))
        blocks = np.unique(np.linspace(0, m.num_blocks - 1, want).round().astype(int)).tolist()
        confidence = []
        for t in taus:
            counts, rows, total = np.zeros(BINS, np.int64), 0, 0.0
            for p, _ in teacher_probabilities(store, blocks, t):
                top = p.max(axis=1)
                counts += np.histogram(top, bins=BINS, range=(0.0, 1.0))[0]
                rows += len(top)
                total += float(top.sum())
            confidence.append({"counts": counts.tolist(), "rows": rows, "mean": total / max(rows, 1), "temperature": m.temperatures[t]})
    finally:
        store.close()
    return {"manifest": m, "path": str(cfg.cache_path), "bytes_per_row": per_row, "target_bytes_per_row": m.target_bytes_per_row(),
            "feature_bytes_per_row": features, "bytes_on_disk": size_on_disk(cfg.cache_path), "confidence": confidence,
            "confidence_of": "top-1 probability" if m.targets == "topk" else "largest probability among the drawn ids"}


# --------------------------------------------------------------------------------------------- markdown


def markdown(cfg: PipelineConfig, metrics: dict, curves: dict, store: dict | None) -> list[str]:
    kind, test, models = metrics["kind"], metrics["test_split"], metrics["models"]
    lines = ["# kd-pipeline report", "", f"Run folder `{cfg.out_dir}`, kind {kind}. " + "Evaluated splits: "
             + ", ".join(f"{s} ({n:,} rows)" for s, n in metrics["rows"].items()) + ".", "", f"## Results on the {test} split", ""]
    fs = metrics.get("from_store") or {}
    if "teacher" not in models and fs.get("split") == test:
        lines.append(f"- teacher: {100 * fs['teacher']['accuracy']:.2f}% {test} accuracy, measured from the store's targets "
                     "(this pipeline has no teacher)")
    for n, r in models.items():
        lines.append(f"- {display_name(n)}: {headline(kind, r[test], test, per_char(metrics))}")
    if "student" in models and "baseline" in models:
        lines.append(f"- **KD gain: {kd_gain(kind, models['student'][test], models['baseline'][test], per_char(metrics))}**")
    lines += ["", *settings_lines(cfg, store), "", *store_section(store), "## Every model and split", "",
              "| model | split | accuracy | cross-entropy | perplexity | agreement with teacher | parameters | bytes on disk | CPU latency / sample (ms) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for n, r in models.items():
        for s in metrics["rows"]:
            v = r[s]
            agree = "-" if v.get("agreement_with_teacher") is None else f"{100 * v['agreement_with_teacher']:.1f}%"
            lines.append(f"| {display_name(n)} | {s} | {100 * v['accuracy']:.2f}% | {v['cross_entropy']:.3f} | {v['perplexity']:.2f} | "
                         f"{agree} | {r['parameters']:,} | {format(r['bytes_on_disk'], ',') if r['bytes_on_disk'] else '-'} | {r['latency_ms_per_sample_cpu']:.3f} |")
    lines += ["", "## Plots", "", "![validation curves, loss terms, accuracy vs size and latency, teacher confidence](report.png)", "",
              *curve_notes(cfg, curves), ""]
    return lines + store_lines(fs)


def settings_lines(cfg: PipelineConfig, store: dict | None) -> list[str]:
    """'## Settings that produced these results': what each training stage and the teacher pass ran with."""
    lines = ["## Settings that produced these results", ""]
    m = store["manifest"] if store else None
    if cfg.teacher is not None:
        v, src = stage_settings(cfg, "train_teacher")
        t, tt = v.get("teacher") or {}, v.get("teacher_train")
        trained = f", trained {_train(tt)}" if tt else ", used as its factory builds it (no teacher_train)"
        lines.append(f"- teacher: `{t.get('factory')}` {_kw(t.get('kwargs'))}{trained} (from {src})")
    elif m is not None:
        lines.append(f"- teacher: not in this pipeline; the store's was `{m.teacher.factory}` {_kw(m.teacher.kwargs)} "
                     f"(checkpoint sha256 {m.teacher.checkpoint_sha256[:12]}…)")
    if m is not None:
        feats = ", ".join(f"{n} {tuple(f.shape)}" for n, f in m.features.items()) or "none"
        lines.append(f"- store: {m.targets} targets, k = {m.top_k} of {m.num_classes:,} classes, temperatures {list(m.temperatures)}, "
                     f"values {m.values_dtype}, features: {feats} (from the store's manifest)")
    v, src = stage_settings(cfg, "train_student")
    d, st, s = v.get("distill") or {}, v.get("student_train"), v.get("student") or {}
    alpha, tau = d.get("alpha"), d.get("temperature")
    extra = "".join(f", {k} {d[k]}" for k in ("feature", "relation") if d.get(k))
    if d.get("teachers"):
        extra += f", the mixture of {len(d['teachers'])} stores"
    kd = (f"distill.mode {d.get('mode')}, α = {alpha} (weight of CE on labelled rows), τ = {tau:g} (the KL term weighs "
          f"(1 − α)·τ² = {(1 - alpha) * tau * tau:.3g}){extra}") if alpha is not None and tau is not None else "distill settings unknown"
    lines.append(f"- KD student: `{s.get('factory')}` {_kw(s.get('kwargs'))}; {kd}; {_train(st)} (from {src})")
    v, src = stage_settings(cfg, "train_baseline")
    lines.append(f"- baseline: the same model on hard labels of the `{cfg.data.train_split}` split only; {_train(v.get('student_train'))} (from {src})")
    return lines


def store_section(store: dict | None) -> list[str]:
    if store is None:
        return ["## Store", "", "No complete store at this pipeline's cache.path.", ""]
    m, cs = store["manifest"], store["confidence"]
    unit = "token" if m.kind == "sequence" else "row"
    conf = "; ".join(f"mean {c['mean']:.3f} at τ = {c['temperature']:g}" for c in cs)
    return ["## Store", "", f"`{store['path']}`: {m.num_rows:,} {unit}s × {store['bytes_per_row']:,} B/{unit} (targets "
            f"{store['target_bytes_per_row']} + features {store['feature_bytes_per_row']}"
            + (f" + other {store['bytes_per_row'] - store['target_bytes_per_row'] - store['feature_bytes_per_row']}"
               if store['bytes_per_row'] > store['target_bytes_per_row'] + store['feature_bytes_per_row'] else "")
            + f"), {human_bytes(store['bytes_on_disk'])} on disk ({store['bytes_on_disk']:,} B). "
            f"Teacher confidence ({store['confidence_of']}) over {cs[0]['rows']:,} of its {unit}s: {conf}.", ""]


def curve_notes(cfg: PipelineConfig, curves: dict) -> list[str]:
    split = curve_split(cfg)
    val = {n: split_curve(c)[1] for n, c in curves.items()}
    if not any(val.values()):
        return ["No validation curve: set `student_train.eval_every` (and `teacher_train.eval_every`) to a number of steps."]
    rows = max(p["rows"] for v in val.values() for p in v)
    note = (f"Validation curves: every `eval_every` steps, the first {rows:,} rows of the `{split}` split.")
    if not cfg.data.val_split:
        note += (f" This pipeline has no validation split (data.val_split), so the curves use the {split} split, the split of "
                 "the final figures: use them to see how training went, not to choose a step.")
    return [note]


def _train(t: dict | None) -> str:
    if not t:
        return "training settings unknown"
    wd = f", weight decay {t['weight_decay']:g}" if t.get("weight_decay") else ""
    return f"{t['steps']:,} steps × batch {t['batch_size']}, Adam lr {t['lr']:g}{wd}"


def _kw(kwargs) -> str:
    return ", ".join(f"{k}={v}" for k, v in (kwargs or {}).items()) or "(no kwargs)"


# ------------------------------------------------------------------------------------------------- plots


def plot(png: Path, cfg: PipelineConfig, metrics: dict, curves: dict, store: dict | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [lambda ax: _validation(ax, cfg, metrics, curves), lambda ax: _ce(ax, curves)]
    student_parts = sorted({k for r in split_curve(curves.get("student", []))[0] for k in r} - {"step", "time_s", "loss", "ce"})
    panels += [lambda ax, k=k: _term(ax, cfg, curves["student"], k) for k in student_parts]
    panels += [lambda ax: _versus(ax, metrics, "parameters", "parameters", log=True),
               lambda ax: _versus(ax, metrics, "latency_ms_per_sample_cpu", "CPU latency, batch 1 (ms / sample)", log=False),
               lambda ax: _confidence(ax, store)]
    cols = 3
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    for ax, draw in zip(axes.flat, panels):
        draw(ax)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def _figure(kind: str) -> tuple[str, str]:
    return ("perplexity", "perplexity (lower is better)") if kind == "sequence" else ("accuracy", "accuracy (%)")


def _validation(ax, cfg, metrics, curves) -> None:
    key, label = _figure(metrics["kind"])
    split = curve_split(cfg)
    drawn = False
    for n, c in curves.items():
        pts = split_curve(c)[1]
        if pts:
            y = [p[key] * (100 if key == "accuracy" else 1) for p in pts]
            ax.plot([p["step"] for p in pts], y, marker="o", ms=3, label=display_name(n), color=COLOURS.get(n))
            drawn = True
    ax.set_title(f"validation: {split} {key} vs step" + ("" if cfg.data.val_split else "\n(no val split: test split)"))
    ax.set_xlabel("training step")
    ax.set_ylabel(f"{split} {label}")
    if key == "perplexity":
        ax.set_yscale("log")
    if drawn:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no validation points:\nset student_train.eval_every", ha="center", va="center", transform=ax.transAxes)


def _ce(ax, curves) -> None:
    """The labelled rows' cross-entropy of every model that has one: the same quantity for all."""
    for n, c in curves.items():
        pts = split_curve(c)[0]
        key = "ce" if n == "student" else "loss"  # the hard-label stages' loss is their CE
        pts = [p for p in pts if key in p]
        if pts:
            ax.plot([p["step"] for p in pts], [p[key] for p in pts], label=display_name(n), color=COLOURS.get(n),
                    ls="--" if n == "teacher" else "-")
    ax.set_title("cross-entropy on labelled training rows")
    ax.set_xlabel("training step")
    ax.set_ylabel("nats per labelled row")
    ax.ticklabel_format(axis="y", style="plain", useOffset=False)
    ax.legend()


def _term(ax, cfg, curve, key: str) -> None:
    pts = [p for p in split_curve(curve)[0] if key in p]
    ax.plot([p["step"] for p in pts], [p[key] for p in pts], color=COLOURS["student"])
    d = cfg.distill
    titles = {  # the term as logged (unweighted), and its weight in the loss
        "kl": (f"KL(teacher ‖ KD student) at τ = {d.temperature:g}", f"× (1 − α)·τ² = {(1 - d.alpha) * d.temperature ** 2:.3g} in the loss", "nats per row"),
        "feature_mse": ("feature MSE (KD student)", f"× β = {d.feature.beta:g} in the loss" if d.feature else "", "mean square error"),
        "rkd_dist": ("RKD distance term (KD student)", f"× {d.relation.w_dist:g} in the loss" if d.relation else "", "Huber loss"),
        "rkd_angle": ("RKD angle term (KD student)", f"× {d.relation.w_angle:g} in the loss" if d.relation else "", "Huber loss"),
    }
    title, weight, ylabel = titles.get(key, (f"{key} (KD student)", "", key))
    ax.set_title(title + (f"\n({weight})" if weight else ""))
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.ticklabel_format(axis="y", style="plain", useOffset=False)


def _versus(ax, metrics, fact: str, xlabel: str, log: bool) -> None:
    from matplotlib.ticker import FuncFormatter

    key, label = _figure(metrics["kind"])
    test = metrics["test_split"]
    xs = []
    for (n, r), marker in zip(metrics["models"].items(), "o^sDvP*X"):
        y = r[test][key] * (100 if key == "accuracy" else 1)
        # a legend, not labels beside the points: the two students have the same size and often the same latency
        ax.scatter(r[fact], y, s=70, marker=marker, color=COLOURS.get(n, "tab:green"), alpha=0.85, zorder=3, label=display_name(n))
        xs.append(r[fact])
    if log and min(xs) > 0 and max(xs) / min(xs) > 20:  # a log axis only where sizes span decades
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    elif log:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.margins(x=0.2, y=0.2)
    ax.legend(fontsize="small")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{test} {label}")
    ax.set_title(f"{test} {key} vs {xlabel.split(',')[0].split(' (')[0]}")


def _confidence(ax, store) -> None:
    ax.set_title("teacher confidence")
    if store is None:
        ax.text(0.5, 0.5, "no complete store", ha="center", va="center", transform=ax.transAxes)
        return
    from matplotlib.ticker import FuncFormatter

    edges = np.linspace(0, 1, BINS + 1)
    for i, (c, colour) in enumerate(zip(store["confidence"], ("tab:gray", "tab:purple"))):
        share = 100 * np.asarray(c["counts"]) / max(c["rows"], 1)
        label = f"τ = {c['temperature']:g}{', the KD temperature' if i else ''}: mean {c['mean']:.3f}"
        ax.stairs(share, edges, fill=colour == "tab:gray", color=colour, alpha=0.6 if colour == "tab:gray" else 1.0, lw=2, label=label)
    ax.set_yscale("log")  # a confident teacher puts nearly every row in the last bin: the rest would not show
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlim(0, 1)
    ax.set_title(f"teacher confidence over {store['confidence'][0]['rows']:,} store rows")
    ax.set_xlabel(store["confidence_of"] + " (bins of 0.05)")
    ax.set_ylabel("% of rows (log scale)")
    ax.legend(loc="upper left")
