"""One small training loop for teacher, student and baseline: Adam, a fixed number of steps, a loss curve.

The model is a loss module: `forward(batch) -> (loss, parts)` (kd_pipeline/objectives.py), so the loop is the
same for every objective, and under torchrun it is wrapped in DistributedDataParallel (gradients averaged
across ranks; each rank draws its own share of the data, `batch_size / world` samples per step, so the global
batch and the step count are those of a one-process run). Loss parts are summed on the device and read back
only every `log_every` steps: no host sync per step.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from .config import TrainConfig
from .crashpoints import pause_point
from .distributed import Dist
from .progress import progress
from .resume import TrainCheckpoint

Batch = dict


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Tensors of a batch (and of its Targets) on `device`; numpy fields stay where they are."""
    if device.type == "cpu":
        return batch
    from dataclasses import fields, is_dataclass, replace

    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            out[k] = v.to(device, non_blocking=True)
        elif is_dataclass(v):
            out[k] = replace(v, **{f.name: getattr(v, f.name).to(device, non_blocking=True) for f in fields(v) if torch.is_tensor(getattr(v, f.name))},
                             features={n: t.to(device, non_blocking=True) for n, t in v.features.items()})
        else:
            out[k] = v
    return out


def per_rank(batch_size: int, dist: Dist, where: str) -> int:
    """Samples per step on each rank: the configured (global) batch split evenly between ranks."""
    if batch_size % dist.world:
        from .errors import ConfigError

        raise ConfigError(f"{where}.batch_size: {batch_size} does not split evenly between {dist.world} processes")
    return batch_size // dist.world


def fit(module: nn.Module, batches: Callable[[int], Iterator[Batch]], cfg: TrainConfig, desc: str,
        log_path: Path | None = None, checkpoint: TrainCheckpoint | None = None, dist: Dist = Dist(),
        device: torch.device = torch.device("cpu"), evaluate: Callable[[], dict] | None = None) -> list[dict]:
    """Runs cfg.steps Adam steps of `module` (a loss module) on batches(skip) (an iterator that starts after
    `skip` batches); returns, and rank 0 writes as JSON lines, the loss curve every cfg.log_every steps.
    With `checkpoint`, resumes from its last save (resume.py) and rank 0 saves every `checkpoint.every` steps.
    evaluate: rank 0 calls it every cfg.eval_every steps (and at the last) -> {"step", "time_s", "eval": its
    result} lines in the same curve (kd_pipeline/curves.py)."""
    module = module.to(device)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    curve: list[dict] = []
    keys: list[str] = []  # "loss" and the loss module's parts, summed in `total` (float64, on the device)
    total: torch.Tensor | None = None
    n_acc, start = 0, 0
    got = checkpoint.restore(params, opt, dist) if checkpoint is not None else None
    if got is not None:
        start, st = got
        curve, n_acc = st["curve"], st["n_acc"]
        keys = list(st["acc"])
        total = torch.tensor(list(st["acc"].values()), dtype=torch.float64, device=device) if keys else None
        if dist.is_main:
            print(f"{desc}: resumed from the checkpoint at step {start} ({checkpoint.path})", file=sys.stderr)
    step_fn = torch.nn.parallel.DistributedDataParallel(module) if dist.active else module
    it = batches(start)
    t0 = time.perf_counter()
    with progress(desc, cfg.steps, enabled=dist.is_main) as advance:
        advance(start, 0)
        for step in range(start + 1, cfg.steps + 1):
            batch = to_device(next(it), device)
            loss, parts = step_fn(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            got = torch.stack([loss.detach(), *parts.values()])  # parts are detached: three ops per step, however many
            keys, total = (keys, total + got) if total is not None else (["loss", *parts], got.double())
            n_acc += 1
            # rows: samples, or a sequence batch's token positions (a store row is a token; padding counted: no device sync)
            advance(1, (int(batch["mask"].numel()) if "mask" in batch else len(batch["x"])) * dist.world)
            if step % cfg.log_every == 0 or step == cfg.steps:
                means = _mean(keys, total, n_acc, dist)
                curve.append({"step": step, "time_s": round(time.perf_counter() - t0, 3), **means})
                keys, total, n_acc = [], None, 0
            if evaluate is not None and dist.is_main and cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                curve.append({"step": step, "time_s": round(time.perf_counter() - t0, 3), "eval": evaluate()})
            if checkpoint is not None and checkpoint.due(step, cfg.steps):
                checkpoint.save(step, params, opt, {"curve": curve, "acc": dict(zip(keys, total.tolist() if total is not None else [])), "n_acc": n_acc}, dist)
                pause_point(f"checkpoint:{desc}:{step}")
    if log_path is not None and dist.is_main:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("".join(json.dumps(r) + "\n" for r in curve))
    return curve


def _mean(keys: list[str], total: torch.Tensor, n: int, dist: Dist) -> dict[str, float]:
    """Each part's mean over the steps since the last log point, over all ranks (one sync per log point)."""
    v = total / n
    if dist.active:
        import torch.distributed as td

        td.all_reduce(v)
        v /= dist.world
    return dict(sorted(zip(keys, v.tolist())))


def stage_checkpoint(cfg, name: str, train: TrainConfig, modules: dict[str, nn.Module], *inputs) -> TrainCheckpoint:
    """A stage's checkpoint: <out>/.kd/ckpt/<name>.safetensors, valid only for this `train` config and the
    `inputs` (JSON-able: the config sections and input digests the stage's result depends on)."""
    from .resume import identity

    ident = identity(name, train.model_dump(mode="json"), *inputs)
    return TrainCheckpoint(cfg.out_dir / ".kd" / "ckpt" / f"{name}.safetensors", train.checkpoint_every, ident, modules)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
