"""Checks of a validated pipeline config that span sections, import factories or read the store's manifest:
load_config (config.py) runs them once; each raises ConfigError with one line naming the key and its source
(the file or the `--set`)."""

from __future__ import annotations

from .components import check_kwargs, resolve
from .config import PipelineConfig
from .errors import ConfigError


def check(cfg: PipelineConfig, src) -> None:
    """Checks that span sections, and factories that must import and bind."""
    for p, missing in (("data.num_classes", cfg.data.num_classes is None), ("cache.top_k", cfg.cache.top_k is None)):
        if missing:  # with a teacher (a consumer's come from the store)
            raise ConfigError(f"{src(p)}: {p}: required key is missing")
    n = cfg.data.num_classes
    if cfg.consumer:
        pass  # no teacher pass: its keys were refused, the store's were read (consumer.py)
    elif cfg.kind == "classification":
        for p, bad in (("teacher_train", cfg.teacher_train is None), ("cache.targets", cfg.cache.targets != "topk")):
            if bad:
                raise ConfigError(f"{src(p)}: {p}: {'required' if p == 'teacher_train' else 'sequence stores only'} for kind: classification")
    elif cfg.sequence.recon_tokens and not cfg.data.val_split:
        p = "data.val_split"
        raise ConfigError(f"{src(p)}: {p}: required for kind: sequence (held-out tokens for the reconstruction KL), or set sequence.recon_tokens: 0")
    if cfg.sequence.teacher_outputs is not None and cfg.sequence.teacher_outputs <= n:
        p = "sequence.teacher_outputs"
        raise ConfigError(f"{src(p)}: {p}: must exceed data.num_classes ({n}) (a padded head), got {cfg.sequence.teacher_outputs}")
    if cfg.sequence.student_tokenizer is not None and cfg.cache.targets != "topk":
        p = "cache.targets"
        raise ConfigError(f"{src(p)}: {p}: cross-tokenizer distillation (sequence.student_tokenizer) needs topk targets (ULD compares sorted top-k)")
    if not 1 <= cfg.cache.top_k <= n:
        p = "cache.top_k"
        raise ConfigError(f"{src(p)}: {p}: must be between 1 and num_classes ({n}), got {cfg.cache.top_k}")
    splits = cfg.data_splits
    if len(set(splits)) != len(splits):
        raise ConfigError(f"{src('data')}: data: split names must be distinct, got {splits}")
    for name in cfg.cache.features:
        if not name.isidentifier():
            p = f"cache.features.{name}"
            raise ConfigError(f"{src(p)}: {p}: feature names must be identifiers (letters, digits, _)")
    for p, used in (("distill.feature.cached", cfg.distill.feature), ("distill.relation.cached", cfg.distill.relation)):
        if used is not None and used.cached not in cfg.cache.features:
            raise ConfigError(f"{src(p)}: {p}: {used.cached!r} is not one of cache.features {list(cfg.cache.features)}")
    check_distill(cfg, src)
    for key, comp, injected in (
        ("data", cfg.data, ("split",)),
        ("teacher", cfg.teacher, ("num_classes",)),
        ("student", cfg.student, ("num_classes",)),
        *((("cache.views.transform", cfg.cache.views.transform, ()),) if cfg.cache.views else ()),
    ):
        if comp is None:
            continue
        fn = resolve(comp.factory, f"{src(key + '.factory')}: {key}.factory")
        check_kwargs(fn, comp.kwargs, f"{src(key + '.kwargs')}: {key}", injected)


def check_against_store(cfg: PipelineConfig, src) -> None:
    """A store already at cache_path fixes the temperatures the student can use: check distill.temperature
    at load, naming the file or --set, not when the student stage starts. Reads the manifest only; a missing
    or unreadable store is left to the stages. A temperature in cache.temperatures is accepted as well: a
    changed cache section makes the teacher pass rebuild the store before the student runs. (top_k needs no
    check: no student-side option uses it; the student reads k from the store.)"""
    from .store.reader import peek_manifest

    m = peek_manifest(cfg.cache_path)
    if m is None:
        return
    tau = cfg.distill.temperature
    # the tolerance of losses.temperature_index, which the student stage applies
    if any(abs(t - tau) <= 1e-6 * max(1.0, abs(tau)) for t in (*m.temperatures, *cfg.cache.temperatures)):
        return
    p = "distill.temperature"
    also = "" if list(cfg.cache.temperatures) == list(m.temperatures) else f" nor of cache.temperatures {list(cfg.cache.temperatures)}"
    fix = ("choose one of them: a received store's temperatures are fixed (its producer can make one with this τ)" if cfg.consumer
           else "add it to cache.temperatures (the teacher pass then rebuilds the store)")
    raise ConfigError(f"{src(p)}: {p}: {tau} is not one of the temperatures of the store at {cfg.cache_path} {list(m.temperatures)}{also}; {fix}")


def check_distill(cfg: PipelineConfig, src) -> None:
    """Combinations of distillation types that cannot work together."""
    d = cfg.distill
    bad = [
        ("distill.teachers", len(d.teachers) == 1, "needs two or more stores (one store: set cache.path)"),
        ("distill.teachers", bool(d.teachers) and d.mode != "cached", "mixes stores: mode cached only"),
        ("distill.teachers", bool(d.teachers) and (d.feature or d.relation), "an ensemble store has no features (feature, relation: read one store)"),
        ("distill.generations", d.generations > 0 and d.mode != "cached", "born-again generations distil from stores: mode cached only"),
        ("distill.mode", d.mode == "mutual" and (d.feature or d.relation), "mutual learning has no teacher features"),
        ("distill.mode", d.mode != "cached" and cfg.cache.views is not None, "cache.views replays stored views: mode cached only"),
        ("distill.mode", d.mode != "cached" and cfg.kind != "classification", "online and mutual: kind classification only"),
        ("distill.relation", d.relation is not None and cfg.kind != "classification", "kind classification only (a batch's tokens are too many samples for B^3 angles)"),
        ("distill.generations", d.generations > 0 and cfg.kind != "classification", "born-again generations: kind classification only"),
        ("cache.views", cfg.cache.views is not None and cfg.kind != "classification", "views of a sequence are not defined: kind classification only"),
    ]
    for p, wrong, why in bad:
        if wrong:
            raise ConfigError(f"{src(p)}: {p}: {why}")
