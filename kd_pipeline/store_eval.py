"""Evaluation against the teacher from the store alone: no teacher checkpoint needed, none loaded.

The teacher pass stores the targets of the evaluation split (the config's `test_split`; manifest
`dataset.eval_split`) after the training rows, and the student stream never reads them (layout.py). Over those
rows, streamed block by block (whole chunks, each checked like a training block, so a damaged block is refused
and memory stays O(block)):

- the teacher's accuracy: its stored top-1 id (`topk_indices[:, 0]`, the argmax of a top-k store) against the
  label (classification: the sample's label in samples.parquet; sequence: the next token of the window, as
  the student stream builds it; a window's last position has none);
- each model's accuracy on the same rows, its top-1 agreement with the stored top-1 id, and its
  KL(teacher || model) per row at each temperature the store declares, in nats, mean over rows: from the
  stored top-k + the exact tail mass (losses.sparse_kl: the dense KL when k = C, a lower bound when k < C,
  since grouping the tail classes never raises a KL), or for a sampled store the unbiased estimate
  (losses.sampled_kl; its top-1 is the most probable id drawn, not always the argmax).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch import nn

from .data import SplitSamples
from .kinds import kind_for
from .losses import sampled_kl, sparse_kl
from .store import CacheStore
from .stream import BlockStream, _student_batch, _subset, with_inputs, worker_start


def eval_batches(store: CacheStore, samples: SplitSamples | None, batch_size: int, num_workers: int = 0) -> Iterator[dict]:
    """The evaluation split's rows in store order, `batch_size` samples a batch: targets, labels and inputs
    as the student stream gives them (samples: the dataset the store's sample ids index; None for a sequence)."""
    stream = BlockStream(store, batch_size, window=1, evaluation=True)

    def plan():
        for b in stream.blocks.tolist():
            rows, units = stream._read([b])
            n = len(units["split"])
            for i in range(0, n, batch_size):
                yield _student_batch(*_subset(rows, units, np.arange(i, min(i + batch_size, n))), store)

    return with_inputs(plan(), samples, store.manifest.kind, num_workers, start_method=worker_start(store))


@torch.no_grad()
def store_metrics(store: CacheStore, models: dict[str, nn.Module], samples: SplitSamples | None, batch_size: int,
                  max_rows: int | None = None, num_workers: int = 0, device: torch.device = torch.device("cpu")) -> dict | None:
    """-> {"split", "rows", "labelled_rows", "temperatures", "teacher": {"accuracy"}, "models": {name: {"accuracy",
    "agreement_with_teacher", "kl_to_teacher": {tau: nats}}}} over the store's evaluation rows (the first
    `max_rows` of them, whole batches), or None when the store holds none (made before kd-pipeline 0.2)."""
    m = store.manifest
    if m.dataset.eval_split is None or not store.samples.eval_blocks.any():
        return None
    kind = kind_for(m.kind, m.num_classes)
    kl_of = sparse_kl if m.targets == "topk" else sampled_kl
    taus = list(m.temperatures)
    for model in models.values():
        model.eval().to(device)
    rows = labelled = teacher_right = 0
    acc = {n: {"right": 0, "agree": 0, "kl": np.zeros(len(taus))} for n in models}
    for batch in eval_batches(store, samples, batch_size, num_workers):
        t = batch["targets"]
        y = kind.row_labels(batch)
        top = t.indices[:, 0]
        lab = y >= 0
        rows += len(y)
        labelled += int(lab.sum())
        teacher_right += int((top[lab] == y[lab]).sum())
        x = batch["x"].to(device)
        for name, model in models.items():
            out = kind.rows(model(x), {**batch, "mask": batch["mask"].to(device)} if "mask" in batch else batch).float().cpu()
            a = acc[name]
            a["right"] += int((out.argmax(1)[lab] == y[lab]).sum())
            a["agree"] += int((out.argmax(1) == top).sum())
            a["kl"] += [float(kl_of(out, t, tau).double().sum()) for tau in taus]
        if max_rows is not None and rows >= max_rows:
            break
    return {
        "split": m.dataset.eval_split, "rows": rows, "labelled_rows": labelled, "temperatures": taus,
        "teacher": {"accuracy": teacher_right / max(labelled, 1)},
        "models": {n: {"accuracy": a["right"] / max(labelled, 1), "agreement_with_teacher": a["agree"] / max(rows, 1),
                       "kl_to_teacher": {f"{tau:g}": float(v) / max(rows, 1) for tau, v in zip(taus, a["kl"])}}
                   for n, a in acc.items()},
    }
