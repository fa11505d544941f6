"""Hard-label training on the labelled split: the teacher's recipe and the baseline student's."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import save_model
from .config import Component, PipelineConfig, TrainConfig
from .data import load_splits
from .distill import ce_step
from .models import build_model
from .training import fit, random_batches, seed_everything, stage_checkpoint


def train_hard_labels(cfg: PipelineConfig, component: Component, train: TrainConfig, name: str, ckpt: Path) -> None:
    """Trains component's model with CE on data.train_split; writes ckpt and <out>/logs/<name>.jsonl."""
    seed_everything(cfg.seed)
    x, y = load_splits(cfg.data, [cfg.data.train_split])[cfg.data.train_split]
    labelled = y >= 0  # a user's "train" split may hold unlabelled samples: CE needs labels
    x, y = x[labelled], y[labelled]
    model = build_model(component, cfg.data.num_classes).train()
    batches = random_batches(x, y, train.batch_size, cfg.seed)
    resume = stage_checkpoint(cfg, name, train, {"model": model}, cfg.seed, cfg.data.model_dump(mode="json"), component.model_dump(mode="json"))
    fit(model.parameters(), batches, ce_step(model), train, name, cfg.out_dir / "logs" / f"{name}.jsonl", resume)
    save_model(model, ckpt, {"factory": component.factory, "kwargs": component.kwargs})
    resume.remove()
