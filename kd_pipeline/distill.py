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
    check_manifest_for(store.manifest, str(store.path), cfg, summary, teacher_ckpt)


def check_manifest_for(m, where: str, cfg, summary: dict | None, teacher_ckpt: Path | None = None) -> None:
    """check_store_for on a manifest alone (a consumer's prepare_data checks before opening the store)."""
    again = "run `kd run --stage cache_teacher` to rebuild it"
    rerun, fix = f"re-run cache_teacher ({again})", f"re-run cache_teacher for this dataset ({again})"
    if cfg.teacher is None:  # a consumer cannot rebuild the store: it has no teacher
        rerun = fix = "this pipeline has no teacher: use a store made for this data"
    if m.kind != cfg.kind:
        raise StoreError(f"{where}: store is of kind {m.kind!r}, the pipeline's kind is {cfg.kind!r}")
    if m.num_classes != cfg.data.num_classes:
        raise StoreError(f"{where}: store has num_classes={m.num_classes}, data.num_classes is {cfg.data.num_classes}; {rerun}")
    if summary is not None:
        same = summary["store_splits"] == m.dataset.splits
        fp = summary["fingerprint"] if same or cfg.kind == "sequence" else _fingerprint_of(cfg, m.dataset.splits)
        if fp != m.dataset.fingerprint:
            raise StoreError(
                f"{where}: store was made for other data (dataset fingerprint {m.dataset.fingerprint[:19]}…, "
                f"this dataset {fp[:19]}…); {fix}"
            )
    if teacher_ckpt is not None and teacher_ckpt.is_file() and cfg.teacher is not None:
        comp = cfg.teacher
        if (m.teacher.factory, m.teacher.kwargs) != (comp.factory, dict(comp.kwargs)):
            raise StoreError(
                f"{where}: store was made by teacher {m.teacher.factory} {m.teacher.kwargs}, the config's teacher is "
                f"{comp.factory} {dict(comp.kwargs)}; {again}"
            )
        sha = file_sha256(teacher_ckpt)
        if sha != m.teacher.checkpoint_sha256:
            raise StoreError(
                f"{where}: store was made by another teacher checkpoint (sha256 {m.teacher.checkpoint_sha256[:12]}…, "
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
