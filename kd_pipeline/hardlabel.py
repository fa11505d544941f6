"""Hard-label training on the labelled split: the teacher's recipe and the baseline student's, both kinds."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import save_model, teacher_outputs
from .config import Component, PipelineConfig, TrainConfig
from .curves import validation_probe
from .distributed import Dist, device_for
from .models import build_model, check_output
from .objectives import HardLabels
from .prepare import open_samples, student_vocab
from .stream import shuffled_batches
from .training import fit, per_rank, seed_everything, stage_checkpoint


def train_hard_labels(cfg: PipelineConfig, component: Component, train: TrainConfig, name: str, ckpt: Path,
                      where: str, dist: Dist = Dist()) -> None:
    """Trains component's model with CE on data.train_split's labelled samples (for a sequence: next-token CE);
    writes ckpt and <out>/logs/<name>.jsonl. where: the config section ("teacher", "student")."""
    seed_everything(cfg.seed)
    own = where == "student" and cfg.kind == "sequence" and cfg.sequence.student_tokenizer is not None
    samples = open_samples(cfg, [cfg.data.train_split], side="student" if own else "teacher")  # a student's own tokens
    vocab = student_vocab(cfg) if where == "student" else cfg.data.num_classes
    model = build_model(component, vocab, where, teacher_outputs(cfg) if where == "teacher" else None)
    check_output(model, samples.head(), samples.kind, vocab, where)
    bs = per_rank(train.batch_size, dist, f"{where}_train")

    def batches(skip: int):
        return shuffled_batches(samples, 0, bs, cfg.seed, dist, cfg.data.num_workers, skip)

    d = cfg.model_dump(mode="json")
    resume = stage_checkpoint(cfg, name, train, {"model": model}, cfg.seed, d["kind"], d["data"], d["sequence"],
                              component.model_dump(mode="json"), dist.world)
    device = device_for(dist, train.device)
    fit(HardLabels(model.train(), samples.kind), batches, train, name, cfg.out_dir / "logs" / f"{name}.jsonl", resume, dist, device,
        validation_probe(cfg, model, train, device) if dist.is_main else None)
    if dist.is_main:
        save_model(model.cpu(), ckpt, {"factory": component.factory, "kwargs": component.kwargs})
    resume.remove(dist)

