"""Evaluation: accuracy, size, CPU latency, agreement with the teacher; metrics.json and report.md + PNG."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .training import predict


def median_call_ms(call: Callable[[Any], Any], inputs: list, warmup: int = 10) -> float:
    """Median wall time of call(x) over inputs[warmup:], in ms, after calling it on inputs[:warmup]."""
    for x in inputs[:warmup]:
        call(x)
    times = []
    for x in inputs[warmup:]:
        t0 = time.perf_counter()
        call(x)
        times.append(time.perf_counter() - t0)
    times.sort()
    return 1000.0 * times[len(times) // 2]


@torch.no_grad()
def latency_per_sample_ms(model: nn.Module, x: torch.Tensor, runs: int) -> float:
    """Median wall time of a batch-1 forward on CPU, in ms (after 10 warm-up calls)."""
    model = model.eval().cpu()
    return median_call_ms(model, [x[i % len(x) : i % len(x) + 1] for i in range(runs + 10)])


def evaluate_models(models: dict[str, tuple[nn.Module, Path]], x: torch.Tensor, y: torch.Tensor, latency_runs: int, batch_size: int) -> dict:
    """models: name -> (model, checkpoint); the first is the reference ("teacher") for agreement."""
    preds = {name: predict(m, x, batch_size).argmax(1) for name, (m, _) in models.items()}
    ref = preds[next(iter(models))]
    out = {}
    for name, (m, ckpt) in models.items():
        p = preds[name]
        out[name] = {
            "accuracy": float((p == y).float().mean()),
            "parameters": int(sum(t.numel() for t in m.parameters())),
            "bytes_on_disk": ckpt.stat().st_size,
            "latency_ms_per_sample_cpu": latency_per_sample_ms(m, x, latency_runs),
            "agreement_with_teacher": float((p == ref).float().mean()),
        }
    out["test_samples"] = len(y)
    return out


def read_curve(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_report(out_dir: Path, metrics: dict, curves: dict[str, list[dict]]) -> Path:
    """report.md with one PNG: accuracy vs parameters, and training loss curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in metrics if isinstance(metrics[n], dict)]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for n in names:
        a1.scatter(metrics[n]["parameters"], 100 * metrics[n]["accuracy"], s=60)
        a1.annotate(n, (metrics[n]["parameters"], 100 * metrics[n]["accuracy"]), textcoords="offset points", xytext=(6, 4))
    a1.set_xscale("log")
    a1.set_xlabel("parameters")
    a1.set_ylabel("test accuracy (%)")
    a1.set_title("accuracy vs size")
    a1.grid(alpha=0.3)
    for n, curve in curves.items():
        if curve:
            a2.plot([r["step"] for r in curve], [r["loss"] for r in curve], label=n)
    a2.set_xlabel("step")
    a2.set_ylabel("training loss")
    a2.set_yscale("log")
    a2.set_title("training curves")
    a2.legend()
    a2.grid(alpha=0.3)
    fig.tight_layout()
    png = out_dir / "report.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)

    lines = [
        "# kd-pipeline report",
        "",
        f"Test split: {metrics['test_samples']} samples.",
        "",
        "| model | accuracy | parameters | bytes on disk | CPU latency / sample (ms) | agreement with teacher |",
        "|---|---|---|---|---|---|",
    ]
    for n in names:
        r = metrics[n]
        lines.append(
            f"| {n} | {100 * r['accuracy']:.2f}% | {r['parameters']:,} | {r['bytes_on_disk']:,} | "
            f"{r['latency_ms_per_sample_cpu']:.3f} | {100 * r['agreement_with_teacher']:.1f}% |"
        )
    lines += ["", "![accuracy vs parameters and training curves](report.png)", ""]
    md = out_dir / "report.md"
    md.write_text("\n".join(lines))
    return md
