"""Validation curves: a training stage's model evaluated every `eval_every` steps (TrainConfig.eval_every).

`validation_probe` returns what `training.fit` calls on rank 0: the model's accuracy, cross-entropy and
perplexity over the first `evaluate.curve_rows` rows of `data.val_split` (the test split when the pipeline has
none: the report says so), streamed a batch at a time in this process. It draws nothing from the training's
random stream (the DataLoader takes a seed from torch's generator: its state is put back), so a run with
curves trains exactly the weights of one without. The points go into the stage's log
(<out>/logs/<stage>.jsonl) as {"step", "time_s", "eval": {"split", "rows", "accuracy", "cross_entropy",
"perplexity"}} lines beside the loss lines ({"step", "time_s", "loss", ...}).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from .config import PipelineConfig, TrainConfig


def curve_split(cfg: PipelineConfig) -> str:
    """The split the validation curves are measured on."""
    return cfg.data.val_split or cfg.data.test_split


def eval_limit(cfg: PipelineConfig, ds, rows: int) -> int:
    """Samples of the split's dataset `ds` that hold about `rows` rows: rows themselves for classification;
    for a sequence the windows whose tokens add up to `rows` (at least one)."""
    if cfg.kind == "classification":
        return min(rows, len(ds))
    return max(1, int(np.searchsorted(np.cumsum(ds.lengths), rows, side="right")))


def validation_probe(cfg: PipelineConfig, model: nn.Module, train: TrainConfig, device: torch.device) -> Callable[[], dict] | None:
    """-> a function measuring `model` on the curve split now (None when train.eval_every is 0)."""
    if not train.eval_every:
        return None
    from .evaluation import split_metrics
    from .prepare import open_samples, samples_per_batch

    split = curve_split(cfg)
    samples = open_samples(cfg, [split])
    limit = eval_limit(cfg, samples.datasets[0], cfg.evaluate.curve_rows)
    batch = samples_per_batch(cfg, cfg.evaluate.batch_size)

    def probe() -> dict:
        rng, was_training = torch.get_rng_state(), model.training
        try:
            r = split_metrics({"model": model}, samples, 0, limit, batch, 0, device, reference="")["model"]
        finally:
            model.train(was_training)
            torch.set_rng_state(rng)
        return {"split": split, "rows": r["rows"], "accuracy": r["accuracy"], "cross_entropy": r["cross_entropy"], "perplexity": r["perplexity"]}

    return probe


def split_curve(curve: list[dict]) -> tuple[list[dict], list[dict]]:
    """A stage's log lines -> (loss points, validation points)."""
    return [r for r in curve if "eval" not in r], [{"step": r["step"], **r["eval"]} for r in curve if "eval" in r]
