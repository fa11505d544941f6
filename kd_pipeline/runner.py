"""Running the pipeline DVC-style: a stage runs only when its params, its inputs or its outputs changed.

Stages are modules named by import path (data, not imports: the library never imports `stages`). Each stage
module declares NAME, PARAMS (top-level config keys it reads), deps(cfg) and outs(cfg) (paths), EVERY_RANK
(whether every torchrun process runs it, or rank 0 alone while the others wait) and run(cfg, dist); an
optional stage also declares enabled(cfg) (born_again: only with distill.generations).
After a successful run the runner writes `<out>/.kd/stamps/<NAME>.json` with the hashes of those three; the
next `kd run` skips the stage if all still match. The stamp also keeps the parameter values and each factory
file's hash (not compared: `stale_reasons` reads them to say *why* a stage would run, e.g.
`distill.alpha changed (0.3 -> 0.5)`; stamps written before they were kept give a coarser reason). A student parameter therefore re-runs only the student
stages and evaluation: the teacher pass depends on data, teacher, cache and the teacher checkpoint only.

A pipeline without a teacher (a consumer of someone else's store, kd_pipeline/consumer.py) has no teacher
stages (those with NEEDS_TEACHER). Stages may declare preflight(cfg), run before any stage runs (e.g. the
cache stage refusing a store this run folder may not write before a teacher is trained for it).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
from pathlib import Path
from types import ModuleType

import torch

from .checkpoint import file_sha256
from .config import PipelineConfig
from .distributed import Dist
from .errors import ConfigError
from .progress import make_console

STAGES = (  # every pipeline's stages, in order, for both kinds (what differs is in kd_pipeline/kinds.py)
    "stages.prepare_data",
    "stages.train_teacher",
    "stages.cache_teacher",
    "stages.train_student",
    "stages.train_baseline",
    "stages.born_again",  # only with distill.generations (self-distillation)
    "stages.evaluate",
)

console = make_console()


def load_stages() -> list[ModuleType]:
    return [importlib.import_module(m) for m in STAGES]


def path_digest(p: Path) -> str | None:
    """Content identity of a stage output: a file's sha256, or for a store its manifest, Parquet table and
    block markers (which carry the sha256 of every block), so a store is identified without reading it."""
    from .store.location import is_remote

    if is_remote(p):
        from .store.reader import remote_digest

        return remote_digest(p)
    if p.is_file():
        return file_sha256(p)
    if not p.is_dir():
        return None
    h = hashlib.sha256()
    files = [p / "zarr.json", p / "samples.parquet", *sorted((p / "_markers").glob("*.json"))]
    if not (p / "zarr.json").exists():
        files = sorted(f for f in p.rglob("*") if f.is_file())
    for f in files:
        if f.exists():
            h.update(f.relative_to(p).as_posix().encode())
            h.update(file_sha256(f).encode())
    return h.hexdigest()


def _params_hash(cfg: PipelineConfig, keys: tuple[str, ...]) -> str:
    d = cfg.model_dump(mode="json")
    return hashlib.sha256(json.dumps({k: d[k] for k in keys}, sort_keys=True).encode()).hexdigest()


def _stamp_path(cfg: PipelineConfig, name: str) -> Path:
    return cfg.out_dir / ".kd" / "stamps" / f"{name}.json"


def _code_hash(cfg: PipelineConfig, keys: tuple[str, ...]) -> str:
    """Source files of the factories a stage builds: editing a model's code re-runs what trained it."""
    d = cfg.model_dump(mode="json")
    h = hashlib.sha256()
    for k in keys:
        spec = d[k].get("factory") if isinstance(d[k], dict) else None
        if spec:
            mod = importlib.import_module(spec.split(":")[0])
            src = getattr(mod, "__file__", None)
            h.update(spec.encode())
            if src and Path(src).is_file():
                h.update(file_sha256(Path(src)).encode())
    return h.hexdigest()


def _code_files(cfg: PipelineConfig, keys: tuple[str, ...]) -> dict[str, str]:
    """factory "module:function" -> sha256 of its module's file, for the stamp (what `_code_hash` hashed)."""
    d = cfg.model_dump(mode="json")
    out = {}
    for k in keys:
        spec = d[k].get("factory") if isinstance(d[k], dict) else None
        if spec:
            src = getattr(importlib.import_module(spec.split(":")[0]), "__file__", None)
            out[spec] = file_sha256(Path(src)) if src and Path(src).is_file() else ""
    return out


def _state(cfg: PipelineConfig, stage: ModuleType) -> dict:
    return {
        "params": _params_hash(cfg, stage.PARAMS),
        "code": _code_hash(cfg, stage.PARAMS),
        "deps": {str(p): path_digest(p) for p in stage.deps(cfg)},
    }


def read_stamp(cfg: PipelineConfig, name: str) -> dict | None:
    try:
        stamp = json.loads(_stamp_path(cfg, name).read_text())
        return stamp if isinstance(stamp, dict) else None
    except (OSError, ValueError):
        return None


def stale_reasons(cfg: PipelineConfig, stage: ModuleType) -> list[str]:
    """Why `stage` would run: [] when it is up to date, else one short phrase per cause, e.g.
    'distill.alpha changed (0.3 -> 0.5)', 'input runs/x/cache changed', 'output runs/x/student.safetensors is missing'."""
    if not _stamp_path(cfg, stage.NAME).is_file():
        return ["not run yet in this run folder"]
    stamp = read_stamp(cfg, stage.NAME)
    if stamp is None:
        return ["its stamp is unreadable"]
    now, why = _state(cfg, stage), []
    if stamp.get("params") != now["params"]:
        old = stamp.get("values")
        why += changed_values(old, {k: v for k, v in cfg.model_dump(mode="json").items() if k in stage.PARAMS}) if isinstance(old, dict) \
            else [f"its parameters changed ({', '.join(stage.PARAMS)}; the stamp predates recorded values: it keeps only their hash)"]
    if stamp.get("code") != now["code"]:
        old, new = stamp.get("code_files"), _code_files(cfg, stage.PARAMS)
        files = [f for f in new if isinstance(old, dict) and old.get(f) != new[f]] if isinstance(old, dict) else []
        why += [f"code changed: {', '.join(files)}" if files else "the code of its factories changed"]
    deps = stamp.get("deps") if isinstance(stamp.get("deps"), dict) else {}
    for p, digest in now["deps"].items():
        if digest is None:
            why.append(f"input {p} is missing")
        elif p not in deps:
            why.append(f"new input {p}")
        elif deps[p] != digest:
            why.append(f"input {p} changed")
    outs = stamp.get("outs") if isinstance(stamp.get("outs"), dict) else {}
    for p in stage.outs(cfg):
        digest = path_digest(p)
        if digest is None:
            why.append(f"output {p} is missing")
        elif outs.get(str(p)) != digest:
            why.append(f"output {p} changed since the stage wrote it")
    if why or is_fresh(cfg, stage):
        return why
    return ["its stamp differs"]


def changed_values(old: dict, new: dict, limit: int = 4) -> list[str]:
    """Dotted keys whose values differ between two config dumps: ['distill.alpha changed (0.3 -> 0.5)', ...]."""
    a, b = _flatten(old), _flatten(new)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, "<unset>") != b.get(k, "<unset>"))
    out = [f"{k} changed ({_short(a.get(k, '<unset>'))} -> {_short(b.get(k, '<unset>'))})" for k in keys[:limit]]
    return out + ([f"and {len(keys) - limit} more keys"] if len(keys) > limit else [])


def _flatten(d, prefix: str = "") -> dict:
    if not isinstance(d, dict) or not d:
        return {prefix.rstrip("."): d}
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}."))
    return out


def _short(v) -> str:
    s = json.dumps(v) if not isinstance(v, str) else v
    return s if len(s) <= 40 else s[:37] + "..."


def is_fresh(cfg: PipelineConfig, stage: ModuleType) -> bool:
    stamp = read_stamp(cfg, stage.NAME)
    if stamp is None:
        return False
    if {k: stamp.get(k) for k in ("params", "code", "deps")} != _state(cfg, stage):
        return False
    outs = {str(p): path_digest(p) for p in stage.outs(cfg)}
    return None not in outs.values() and outs == stamp.get("outs")


def save_resolved_config(cfg: PipelineConfig) -> None:
    """<out>/.kd/pipeline.json: the resolved config, so tools that start from a run folder (`kd export`) need no YAML."""
    (cfg.out_dir / ".kd").mkdir(parents=True, exist_ok=True)
    (cfg.out_dir / ".kd" / "pipeline.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=1))


def pipeline_stages(cfg: PipelineConfig, only: list[str] = ()) -> list[ModuleType]:
    """The stages this config has, in order (optional ones it does not ask for and, without a teacher, the
    teacher's left out); raises ConfigError for a name in `only` that is not one of them."""
    stages = load_stages()
    names = [s.NAME for s in stages]
    for n in only:
        if n not in names:
            raise ConfigError(f"--stage {n}: no such stage (stages: {', '.join(names)})")
    # optional stages the config does not ask for (born_again without distill.generations) are left out
    stages = [s for s in stages if getattr(s, "enabled", lambda c: True)(cfg)]
    if cfg.consumer:
        stages = [s for s in stages if not getattr(s, "NEEDS_TEACHER", False)]
        mine = [s.NAME for s in stages]
        for n in only:
            if n not in mine:
                raise ConfigError(f"--stage {n}: a pipeline without a teacher (it trains from cache.path) has only the stages {', '.join(mine)}")
    return stages


def preflight(cfg: PipelineConfig, stages: list[ModuleType], only) -> None:
    """The checks stages declare (preflight(cfg)) for what no stage may start without, e.g. a cache.path that
    holds a user's folder or another run's store: refused before hours of teacher training, not after."""
    for stage in stages:
        if hasattr(stage, "preflight") and (not only or stage.NAME in only):
            stage.preflight(cfg)


def run_pipeline(cfg: PipelineConfig, only: list[str] = (), force: bool = False, dist: Dist | None = None,
                 timings: list[dict] | None = None) -> list[str]:
    """Runs the stages in order (only those named in `only`, if given); returns the names that ran.
    timings: if given, gets {"stage", "status" ("ran" | "up to date" | "not asked"), "seconds"} per stage
    (rank 0; for the run summary, kd_pipeline/summary.py).
    Under torchrun (RANK/WORLD_SIZE in the environment) every process calls this: rank 0 decides what is
    fresh and writes the stamps; see kd_pipeline/distributed.py for who runs what."""
    if cfg.threads:  # 0 = leave torch's default; for this whole process (see config.PipelineConfig.threads)
        torch.set_num_threads(cfg.threads)
    stages = pipeline_stages(cfg, only)
    preflight(cfg, stages, only)
    dist = dist or Dist.from_env(cfg.cache.device)
    ran = []
    if dist.is_main:
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        save_resolved_config(cfg)
    log = timings if timings is not None and dist.is_main else []
    for stage in stages:
        if only and stage.NAME not in only:
            log.append({"stage": stage.NAME, "status": "not asked", "seconds": None})
            continue
        if dist.decide(not force and dist.is_main and is_fresh(cfg, stage)):
            if dist.is_main:
                console.print(f"[dim]{stage.NAME}: up to date, skipped[/dim]")
            log.append({"stage": stage.NAME, "status": "up to date", "seconds": None})
            continue
        if dist.is_main:
            console.print(f"[bold]{stage.NAME}[/bold]")
        t0 = time.perf_counter()
        state = _state(cfg, stage) if dist.is_main else None  # deps hashed before the run: what it was run on
        if dist.is_main:  # not compared: what stale_reasons reads to say what changed
            state["values"] = {k: v for k, v in cfg.model_dump(mode="json").items() if k in stage.PARAMS}
            state["code_files"] = _code_files(cfg, stage.PARAMS)
        if stage.EVERY_RANK:
            stage.run(cfg, dist)
        else:
            dist.together(lambda: stage.run(cfg, dist) if dist.is_main else None)
        dist.barrier()
        if dist.is_main:
            state["outs"] = {str(p): path_digest(p) for p in stage.outs(cfg)}
            sp = _stamp_path(cfg, stage.NAME)
            sp.parent.mkdir(parents=True, exist_ok=True)
            sp.write_text(json.dumps(state, indent=1, sort_keys=True))
            seconds = time.perf_counter() - t0
            console.print(f"[green]{stage.NAME}: done in {seconds:.1f} s[/green]")
            log.append({"stage": stage.NAME, "status": "ran", "seconds": seconds})
        ran.append(stage.NAME)
    return ran
