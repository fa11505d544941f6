"""Evaluation, the same for both kinds: every model over a split's rows, streamed, -> metrics.json, report.

Per model and split, over the rows with a label: accuracy (top-1 = label; next-token accuracy for a sequence),
cross-entropy (nats per row) and perplexity (exp of it), for a sequence with character offsets also nats per
character of the labelled tokens' text and its exponential (comparable across tokenizers), and over all rows
the top-1 agreement with the teacher when it is one of the models (None where the vocabularies differ).
Per model: parameters, checkpoint bytes, and CPU latency of a one-sample forward. Against the teacher's stored
targets (no teacher needed): kd_pipeline/store_eval.py, in metrics.json's "from_store" and the report's last table
(kd_pipeline/report.py writes the report).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import SplitSamples, batch_loader, batches_of, sequential_keys


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
    """Median wall time of a batch-1 forward on CPU, in ms (after 10 warm-up calls). x: (1, ...) one sample."""
    model = model.eval().cpu()
    return median_call_ms(model, [x[i % len(x) : i % len(x) + 1] for i in range(runs + 10)])


@torch.no_grad()
def split_metrics(models: dict[str, nn.Module], samples: SplitSamples, split: int, limit: int, batch_size: int,
                  num_workers: int = 0, device: torch.device = torch.device("cpu"), reference: str = "teacher") -> dict[str, dict]:
    """models: name -> model; models[reference], if there, is the reference for agreement (else agreement is
    None). The first `limit` samples of `split`.
    -> name -> {accuracy, cross_entropy, perplexity, agreement_with_teacher, rows, labelled_rows}."""
    models = dict(sorted(models.items(), key=lambda kv: kv[0] != reference))  # the reference first
    kind = samples.kind
    for m in models.values():
        m.eval().to(device)
    acc = {n: np.zeros(4) for n in models}  # correct, ce sum, agreeing rows, rows
    labelled, chars = 0, 0
    keys = sequential_keys([limit], [0], batch_size)
    keys = ((np.full(len(i), split, np.int64), i) for _, i in keys)
    for batch in batches_of(batch_loader(samples, keys, num_workers)):
        x = batch["x"].to(device)
        y = kind.row_labels(batch).to(device)
        lab = y >= 0
        labelled += int(lab.sum())
        if "char_len" in batch:  # characters of the labelled tokens: per-character figures compare tokenizers
            chars += int(batch["char_len"][batch["mask"]].sum())
        ref = None
        for name, m in models.items():
            rows = kind.rows(m(x), {**batch, "mask": batch.get("mask", torch.ones(0)).to(device)} if "mask" in batch else batch).float()
            top1 = rows.argmax(1)
            ref = top1 if ref is None and name == reference else ref
            a = acc[name]
            a[0] += int((top1[lab] == y[lab]).sum())
            a[1] += float(F.cross_entropy(rows[lab], y[lab], reduction="sum")) if lab.any() else 0.0
            a[2] += int((top1 == ref).sum()) if ref is not None else 0
            a[3] += len(rows)
    out = {}
    for name, (correct, ce, agree, rows) in acc.items():
        ce_mean = ce / max(labelled, 1)
        out[name] = {"accuracy": correct / max(labelled, 1), "cross_entropy": ce_mean, "perplexity": math.exp(min(ce_mean, 700.0)),
                     "agreement_with_teacher": agree / max(rows, 1) if reference in models else None, "rows": int(rows), "labelled_rows": labelled}
        if chars:  # nats per character of text, and its exponential: comparable across tokenizers
            out[name].update(nats_per_char=ce / chars, char_perplexity=math.exp(min(ce / chars, 700.0)), chars=chars)
    return out


def model_facts(model: nn.Module, ckpt: Path | None, sample_x: torch.Tensor, latency_runs: int) -> dict:
    return {
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "bytes_on_disk": ckpt.stat().st_size if ckpt is not None and ckpt.is_file() else None,
        "latency_ms_per_sample_cpu": latency_per_sample_ms(model, sample_x, latency_runs),
    }


def read_curve(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def store_lines(fs: dict | None) -> list[str]:
    """report.md's table of metrics against the teacher's stored targets (store_eval.py), if any."""
    if not fs:
        return []
    taus = [f"{t:g}" for t in fs["temperatures"]]
    lines = [f"## Against the teacher's stored targets ({fs['split']} split, {fs['rows']:,} rows, from the store alone)", "",
             f"Teacher accuracy (stored top-1 vs label): {100 * fs['teacher']['accuracy']:.2f}%.", "",
             "| model | accuracy | top-1 agreement with the teacher | " + " | ".join(f"KL(teacher ‖ model) at τ={t} (nats)" for t in taus) + " |",
             "|---|---|---|" + "---|" * len(taus)]
    from .summary import display_name

    for n, v in fs["models"].items():
        lines.append(f"| {display_name(n)} | {100 * v['accuracy']:.2f}% | {100 * v['agreement_with_teacher']:.2f}% | "
                     + " | ".join(f"{v['kl_to_teacher'][t]:.4f}" for t in taus) + " |")
    return lines + [""]

