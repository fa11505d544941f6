"""The student side's checks: is this store made for this pipeline's data, classes and teacher?

Nothing here touches the teacher: a run folder's teacher checkpoint, when there is one, is only hashed.
"""

from __future__ import annotations

from pathlib import Path

from .checkpoint import file_sha256
from .errors import StoreError
from .losses import temperature_index
from .store import CacheStore


def check_store_for(store: CacheStore, cfg, summary: dict | None, teacher_ckpt: Path | None = None) -> None:
    """Refuse a store made for another kind, class count, data or teacher, or without lse for the student's tau.

    summary: this pipeline's data summary (prepare_data), None when the student's inputs come from the store
    itself (sequence). teacher_ckpt: this run's teacher checkpoint; compared only when it exists, so a store
    received from elsewhere, with no teacher in the run folder, is taken on its own manifest."""
    m = store.manifest
    again = "run `kd run --stage cache_teacher` to rebuild it"
    if m.kind != cfg.kind:
        raise StoreError(f"{store.path}: store is of kind {m.kind!r}, the pipeline's kind is {cfg.kind!r}")
    if m.num_classes != cfg.data.num_classes:
        raise StoreError(f"{store.path}: store has num_classes={m.num_classes}, data.num_classes is {cfg.data.num_classes}; re-run cache_teacher ({again})")
    if summary is not None:
        same = summary["store_splits"] == m.dataset.splits
        fp = summary["fingerprint"] if same or cfg.kind == "sequence" else _fingerprint_of(cfg, m.dataset.splits)
        if fp != m.dataset.fingerprint:
            raise StoreError(
                f"{store.path}: store was made for other data (dataset fingerprint {m.dataset.fingerprint[:19]}…, "
                f"this dataset {fp[:19]}…); re-run cache_teacher for this dataset ({again})"
            )
    if teacher_ckpt is not None and teacher_ckpt.is_file():
        comp = cfg.teacher
        if (m.teacher.factory, m.teacher.kwargs) != (comp.factory, dict(comp.kwargs)):
            raise StoreError(
                f"{store.path}: store was made by teacher {m.teacher.factory} {m.teacher.kwargs}, the config's teacher is "
                f"{comp.factory} {dict(comp.kwargs)}; {again}"
            )
        sha = file_sha256(teacher_ckpt)
        if sha != m.teacher.checkpoint_sha256:
            raise StoreError(
                f"{store.path}: store was made by another teacher checkpoint (sha256 {m.teacher.checkpoint_sha256[:12]}…, "
                f"{teacher_ckpt} is {sha[:12]}…); {again}"
            )
    temperature_index(tuple(m.temperatures), cfg.distill.temperature)


def _fingerprint_of(cfg, splits: list[str]) -> str:
    """The fingerprint of this pipeline's data over another split list (a store made by an older version,
    or with other splits): one more streamed pass."""
    from .data.scan import scan_splits
    from .kinds import kind_for

    return scan_splits(cfg.data, kind_for(cfg.kind, cfg.data.num_classes), list(splits), [])["fingerprint"]


def check_uld_store(store: CacheStore) -> None:
    """Cross-tokenizer distillation needs top-k targets (ULD sorts them) and per-row character offsets."""
    m = store.manifest
    if m.targets != "topk":
        raise StoreError(f"{store.path}: store has {m.targets} targets; the ULD loss needs topk (the k largest probabilities)")
    if not m.char_offsets:
        raise StoreError(f"{store.path}: store has no char_end array (made before kd-pipeline kept character offsets); "
                         "re-run cache_teacher to align a student with its own tokenizer")
