"""Training a student from a store (every cached distillation type), and the stores it may read.

`train_from_store` is the train_student stage's cached path and each born-again generation's: it never
builds or loads a teacher. k, temperatures, num_classes and the views come from the store's manifest; the
loss is `objectives.CachedKD` (response KD + the configured feature and relation terms).
Multi-teacher (`distill.teachers`): the stores are mixed once into `<out>/ensemble` with `kd merge`'s tail rule
at `distill.temperature` (kd_pipeline/merge.py), a normal store the student then reads like any other.
"""

from __future__ import annotations

from pathlib import Path

from .checkpoint import save_model
from .curves import validation_probe
from .distill import check_store_for, check_uld_store
from .distributed import Dist, device_for
from .errors import ConfigError
from .kinds import kind_for
from .models import build_model, check_output
from .objectives import CachedKD
from .prepare import load_summary, open_samples, student_vocab
from .store import open_store
from .stream import student_batches
from .training import fit, per_rank, seed_everything, stage_checkpoint
from .store.location import as_location, is_remote
from .uld import CrossTokenizerKD
from .views import check_views

PARAMS = ("seed", "kind", "student", "student_train", "distill")  # what a student's result depends on (+ its store)


def ensemble_path(cfg) -> Path:
    return cfg.out_dir / "ensemble"


def student_store(cfg) -> Path:
    """The store the student reads: the ensemble of distill.teachers, or the pipeline's own cache."""
    return ensemble_path(cfg) if cfg.distill.teachers else cfg.cache_path


def build_ensemble(cfg, summary: dict | None, dist: Dist = Dist()) -> Path:
    """Rank 0 checks each of distill.teachers' stores against this pipeline's data (the pipeline's own cache also
    against its teacher checkpoint) and mixes them into <out>/ensemble at distill.temperature; an ensemble with
    the same manifest is kept (finished blocks are not recomputed). -> its path."""
    from .merge import merge_stores

    def merge():
        for t in cfg.distill.teachers:
            s = open_store(t.path)
            own = str(as_location(t.path)) == str(cfg.cache_path) or (not is_remote(cfg.cache_path) and Path(t.path).resolve() == Path(cfg.cache_path).resolve())
            check_store_for(s, cfg, summary, cfg.out_dir / "teacher.safetensors" if own else None)
            s.close()
        merge_stores([t.path for t in cfg.distill.teachers], ensemble_path(cfg), [t.weight for t in cfg.distill.teachers], cfg.distill.temperature)

    dist.together(lambda: merge() if dist.is_main else None)
    dist.barrier()
    return ensemble_path(cfg)


def train_from_store(cfg, store_path: Path, out: Path, name: str, dist: Dist = Dist(), teacher_ckpt: Path | None = None) -> None:
    """Trains cfg.student from the store at store_path with CachedKD -> `out` (safetensors) and
    <out_dir>/logs/<name>.jsonl. teacher_ckpt: the checkpoint the store must have been made by, when known
    (compared by hash, never loaded). Raises StoreError for a store made for other data, classes or teacher."""
    from .runner import path_digest

    seed_everything(cfg.seed)
    store = open_store(store_path)
    m = store.manifest
    cross = cross_tokenizer(cfg)
    kind = kind_for(m.kind, student_vocab(cfg))
    summary = load_summary(cfg) if not kind.inputs_in_store or cross else None
    check_store_for(store, cfg, summary, teacher_ckpt)
    views = check_views(cfg, store)
    if cross:  # its own tokens of each stored sample, from the data; ULD aligned by character offsets
        check_uld_store(store)
        samples = open_samples(cfg, m.dataset.splits, side="aligned")
    else:
        samples = open_samples(cfg, m.dataset.splits) if not kind.inputs_in_store else None
    bs = per_rank(cfg.student_train.batch_size, dist, "student_train")
    if m.views is not None:  # batch_size counts rows (views), as the baseline's counts samples: the same rows per step
        if bs % m.views.count:
            raise ConfigError(f"student_train.batch_size: {bs} rows per process is not a multiple of the store's {m.views.count} views per sample")
        bs //= m.views.count

    def batches(skip: int):
        return student_batches(store, samples, bs, cfg.distill.shuffle_window, cfg.seed, dist, cfg.data.num_workers, skip, views=views,
                               features=[f.cached for f in (cfg.distill.feature, cfg.distill.relation) if f is not None],
                               kl_tau=cfg.distill.temperature)

    probe = next(batches(0))
    student = build_model(cfg.student, kind.num_classes, "student")
    check_output(student, probe, kind, kind.num_classes, "student")
    if cross:
        module = CrossTokenizerKD(student.train(), kind, cfg.distill)
    else:
        module = CachedKD(student.train(), kind, cfg.distill, m.features, probe)
    d = cfg.model_dump(mode="json")
    ckpt = stage_checkpoint(cfg, name, cfg.student_train, {"student": module}, {k: d[k] for k in PARAMS}, path_digest(store.path), dist.world,
                            *([d["sequence"]] if cross else []))  # a cross-tokenizer student's tokens come from there
    device = device_for(dist, cfg.student_train.device)
    fit(module, batches, cfg.student_train, name, cfg.out_dir / "logs" / f"{name}.jsonl", ckpt, dist, device,
        validation_probe(cfg, student, cfg.student_train, device) if dist.is_main else None)
    if dist.is_main:
        save_model(student.cpu(), out, {"factory": cfg.student.factory, "kwargs": cfg.student.kwargs, "store": str(store.path)})
    ckpt.remove(dist)
    store.close()


def cross_tokenizer(cfg) -> bool:
    """A student with its own tokenizer (sequence.student_tokenizer): ULD from the store, its inputs from the
    data's student tokens."""
    return cfg.kind == "sequence" and cfg.sequence.student_tokenizer is not None


def extra_students(cfg) -> dict[str, Path]:
    """Checkpoints the evaluation reports besides teacher, student and baseline: the mutual-learning peer and
    each born-again generation (evaluation name -> checkpoint of cfg.student's model)."""
    from .bornagain import generation_checkpoint
    from .live import peer_checkpoint

    out = {}
    if cfg.distill.mode == "mutual":
        out["student_peer"] = peer_checkpoint(cfg)
    for g in range(1, cfg.distill.generations + 1):
        out[f"born_again_g{g}"] = generation_checkpoint(cfg, g)
    return out
