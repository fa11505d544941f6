"""One small training loop for teacher, student and baseline: Adam, a fixed number of steps, a loss curve."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from .config import TrainConfig
from .crashpoints import pause_point
from .progress import progress
from .resume import TrainCheckpoint

Batch = dict[str, torch.Tensor]
StepLoss = Callable[[Batch], tuple[torch.Tensor, dict[str, float]]]


def random_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> Iterator[Batch]:
    """Endless shuffled mini-batches of in-memory (x, y); a fresh permutation per epoch."""
    g = torch.Generator().manual_seed(seed)
    n = len(x)
    bs = min(batch_size, n)
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - bs + 1, bs):
            idx = perm[i : i + bs]
            yield {"x": x[idx], "y": y[idx]}


def fit(
    params: Iterable[nn.Parameter],
    batches: Iterator[Batch],
    step_loss: StepLoss,
    cfg: TrainConfig,
    desc: str,
    log_path: Path | None = None,
    checkpoint: TrainCheckpoint | None = None,
) -> list[dict]:
    """Runs cfg.steps Adam steps; returns (and writes as JSON lines) the loss curve every cfg.log_every.
    With `checkpoint`, resumes from its last save (see resume.py) and saves every `checkpoint.every` steps."""
    params = list(params)
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    curve: list[dict] = []
    acc: dict[str, float] = {}
    n_acc = 0
    start = 0
    got = checkpoint.restore(params, opt) if checkpoint is not None else None
    if got is not None:
        start, st = got
        curve, acc, n_acc = st["curve"], st["acc"], st["n_acc"]
        for _ in range(start):  # deterministic iterators: replay to where the checkpoint was taken
            next(batches)
        print(f"{desc}: resumed from the checkpoint at step {start} ({checkpoint.path})", file=sys.stderr)
    t0 = time.perf_counter()
    with progress(desc, cfg.steps) as advance:
        advance(start, 0)
        for step in range(start + 1, cfg.steps + 1):
            batch = next(batches)
            loss, parts = step_loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                acc[k] = acc.get(k, 0.0) + v
            n_acc += 1
            advance(1, len(batch["x"]))
            if step % cfg.log_every == 0 or step == cfg.steps:
                curve.append({"step": step, "time_s": round(time.perf_counter() - t0, 3), **{k: v / n_acc for k, v in acc.items()}})
                acc, n_acc = {}, 0
            if checkpoint is not None and checkpoint.due(step, cfg.steps):
                checkpoint.save(step, params, opt, {"curve": curve, "acc": acc, "n_acc": n_acc})
                pause_point(f"checkpoint:{desc}:{step}")
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("".join(json.dumps(r) + "\n" for r in curve))
    return curve


def stage_checkpoint(cfg, name: str, train: TrainConfig, modules: dict[str, nn.Module], *inputs) -> TrainCheckpoint:
    """A stage's checkpoint: <out>/.kd/ckpt/<name>.safetensors, valid only for this `train` config and the
    `inputs` (JSON-able: the config sections and input digests the stage's result depends on)."""
    from .resume import identity

    ident = identity(name, train.model_dump(mode="json"), *inputs)
    return TrainCheckpoint(cfg.out_dir / ".kd" / "ckpt" / f"{name}.safetensors", train.checkpoint_every, ident, modules)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """-> logits [N, C] on CPU, model in eval mode."""
    model.eval()
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
