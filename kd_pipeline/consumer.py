"""A consumer pipeline: no teacher, a store at `cache.path` made by someone else (local, s3://, http(s)://).

Its stages are prepare_data (its own data check and fingerprint, compared to the store's here),
train_student, train_baseline and evaluate; the teacher stages do not exist for it. Everything the store's
manifest declares is read from the manifest and may not be written in the file again (one source of truth:
a value that could disagree with the store is refused, even an equal one):

    kind, data.num_classes, cache.top_k, cache.temperatures, cache.values_dtype, cache.targets, cache.draws,
    cache.features, cache.chunk_rows

and the teacher pass's own keys (teacher_train, cache.batch_size, cache.device, cache.teacher_dtype) have no
stage to use them. The store is only read: nothing of the consumer's is ever written into it.
"""

from __future__ import annotations

from .config import PipelineConfig
from .errors import ConfigError, NoStoreError, StoreError
from .store.format import Manifest
from .store.reader import read_manifest

# config key -> what the manifest says for it
DECLARED = {
    "kind": lambda m: m.kind,
    "data.num_classes": lambda m: m.num_classes,
    "cache.top_k": lambda m: m.top_k,
    "cache.temperatures": lambda m: list(m.temperatures),
    "cache.values_dtype": lambda m: m.values_dtype,
    "cache.targets": lambda m: m.targets,
    "cache.draws": lambda m: m.sample_draws,
    "cache.features": lambda m: {n: f.module for n, f in m.features.items()},
    "cache.chunk_rows": lambda m: m.chunk_rows,
}
TEACHER_PASS = ("teacher_train", "cache.batch_size", "cache.device", "cache.teacher_dtype")


def _given(raw: dict, dotted: str) -> bool:
    node = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def resolve_consumer(cfg: PipelineConfig, raw: dict, src) -> PipelineConfig:
    """The consumer config with the store's declarations filled in. raw: the YAML as loaded (with --set
    overrides), to tell keys given from defaults. Raises ConfigError naming a key that may not be given,
    StoreError if the store cannot be read or is incomplete."""
    if cfg.cache.path is None:
        p = "cache.path"
        raise ConfigError(f"{src(p)}: {p}: required for a pipeline without a teacher (the store to train from)")
    for p in TEACHER_PASS:
        if _given(raw, p):
            raise ConfigError(f"{src(p)}: {p}: used by the teacher pass only, and a pipeline without a teacher has none; remove it "
                              f"(or add a teacher section to cache your own teacher into a new cache.path)")
    declared = [p for p in DECLARED if _given(raw, p)]  # checked before reading the store: no value is needed to refuse
    try:
        m = read_manifest(cfg.cache_path)[0]
    except NoStoreError:
        p = "cache.path"
        raise ConfigError(f"{src(p)}: {p}: {cfg.cache_path} holds no store (no zarr.json); a pipeline without a teacher "
                          "trains from a store a teacher pass made: point cache.path at that folder (or URL)") from None
    if declared:
        p = declared[0]
        raise ConfigError(f"{src(p)}: {p}: the store's manifest declares it ({DECLARED[p](m)!r} in {cfg.cache_path}); "
                          f"a pipeline without a teacher reads it from there: remove it")
    return apply_manifest(cfg, m)


def apply_manifest(cfg: PipelineConfig, m: Manifest) -> PipelineConfig:
    """cfg with kind, num_classes and the cache section as the manifest declares them."""
    cache = {k.split(".", 1)[1]: f(m) for k, f in DECLARED.items() if k.startswith("cache.")}
    if cache["draws"] is None:
        cache.pop("draws")  # top-k store: the default stands, unused
    return cfg.model_copy(update={
        "kind": m.kind,
        "data": cfg.data.model_copy(update={"num_classes": m.num_classes}),
        "cache": cfg.cache.model_copy(update=cache),
    })


def config_differences(cfg: PipelineConfig, m: Manifest) -> list[str]:
    """The keys the manifest declares on which a pipeline with a teacher disagrees with it: 'key store vs config'."""
    out = []
    for key, of in DECLARED.items():
        if key == "cache.draws" and m.targets != "sampled":
            continue
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        if of(m) != node:
            out.append(f"{key} {of(m)} vs {node}")
    return out


def check_data_for_store(cfg: PipelineConfig, summary: dict) -> None:
    """The consumer's prepare_data: its own data (summary, just made) must be the data the store was made for."""
    from .distill import check_manifest_for

    m = read_manifest(cfg.cache_path)[0]
    check_manifest_for(m, str(cfg.cache_path), cfg, summary if cfg.kind == "classification" else None)
    if m.dataset.eval_split is not None and m.dataset.eval_split != cfg.data.test_split:
        raise StoreError(f"{cfg.cache_path}: the store's evaluation split is {m.dataset.eval_split!r}, data.test_split is "
                         f"{cfg.data.test_split!r}; name the same split")
