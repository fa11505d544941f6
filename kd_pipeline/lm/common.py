"""Pieces several LM stages share: training a model on hard labels, and loading the teacher."""

from __future__ import annotations

from torch import nn

from pathlib import Path

from ..checkpoint import load_model, save_model
from ..models import build_model
from ..training import fit, seed_everything, stage_checkpoint
from .batches import lm_ce_step, sample_batches
from .tokenizer import load_split, windows


def train_lm(cfg, component, train_cfg, name: str, out: Path) -> None:
    """Next-token CE on shuffled whole samples of the train split (teacher, and the hard-label student) -> out.
    Checkpoints every train_cfg.checkpoint_every steps; a killed run resumes from the last one."""
    seed_everything(cfg.seed)
    ids, offsets = load_split(cfg.out_dir / "tokens", cfg.data.train_split, cfg.data.num_classes)
    starts, lengths = windows(offsets, cfg.sequence.context)
    model = build_model(component, cfg.data.num_classes).train()
    batches = sample_batches(ids, starts, lengths, train_cfg.batch_size, cfg.seed)
    dump = cfg.model_dump(mode="json")
    resume = stage_checkpoint(cfg, name, train_cfg, {"model": model}, cfg.seed, dump["data"], dump["sequence"], component.model_dump(mode="json"))
    fit(model.parameters(), batches, lm_ce_step(model), train_cfg, name, cfg.out_dir / "logs" / f"{name}.jsonl", resume)
    save_model(model, out, {"factory": component.factory, "kwargs": component.kwargs})
    resume.remove()


def load_teacher(cfg) -> nn.Module:
    """The trained teacher checkpoint, or (without teacher_train) the teacher as its factory builds it."""
    teacher = build_model(cfg.teacher, cfg.data.num_classes)
    if cfg.teacher_train is not None:
        load_model(teacher, cfg.out_dir / "teacher.safetensors", "teacher")
    return teacher.eval().requires_grad_(False)
