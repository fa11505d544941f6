"""Running the pipeline DVC-style: a stage runs only when its params, its inputs or its outputs changed.

Stages are modules named by import path (data, not imports: the library never imports `stages`). Each stage
module declares NAME, PARAMS (top-level config keys it reads), deps(cfg) and outs(cfg) (paths), EVERY_RANK
(whether every torchrun process runs it, or rank 0 alone while the others wait) and run(cfg, dist); an
optional stage also declares enabled(cfg) (born_again: only with distill.generations).
After a successful run the runner writes `<out>/.kd/stamps/<NAME>.json` with the hashes of those three; the
next `kd run` skips the stage if all still match. A student parameter therefore re-runs only the student
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
from rich.console import Console

from .checkpoint import file_sha256
from .config import PipelineConfig
from .distributed import Dist
from .errors import ConfigError

STAGES = (  # every pipeline's stages, in order, for both kinds (what differs is in kd_pipeline/kinds.py)
    "stages.prepare_data",
    "stages.train_teacher",
    "stages.cache_teacher",
    "stages.train_student",
    "stages.train_baseline",
    "stages.born_again",  # only with distill.generations (self-distillation)
    "stages.evaluate",
)

console = Console(stderr=True)


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


def _state(cfg: PipelineConfig, stage: ModuleType) -> dict:
    return {
        "params": _params_hash(cfg, stage.PARAMS),
        "code": _code_hash(cfg, stage.PARAMS),
        "deps": {str(p): path_digest(p) for p in stage.deps(cfg)},
    }


def is_fresh(cfg: PipelineConfig, stage: ModuleType) -> bool:
    sp = _stamp_path(cfg, stage.NAME)
    if not sp.is_file():
        return False
    try:
        stamp = json.loads(sp.read_text())
    except ValueError:
        return False
    if {k: stamp.get(k) for k in ("params", "code", "deps")} != _state(cfg, stage):
        return False
    outs = {str(p): path_digest(p) for p in stage.outs(cfg)}
    return None not in outs.values() and outs == stamp.get("outs")


def save_resolved_config(cfg: PipelineConfig) -> None:
    """<out>/.kd/pipeline.json: the resolved config, so tools that start from a run folder (`kd export`) need no YAML."""
    (cfg.out_dir / ".kd").mkdir(parents=True, exist_ok=True)
    (cfg.out_dir / ".kd" / "pipeline.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=1))


def run_pipeline(cfg: PipelineConfig, only: list[str] = (), force: bool = False, dist: Dist | None = None) -> list[str]:
    """Runs the stages in order (only those named in `only`, if given); returns the names that ran.
    Under torchrun (RANK/WORLD_SIZE in the environment) every process calls this: rank 0 decides what is
    fresh and writes the stamps; see kd_pipeline/distributed.py for who runs what."""
    if cfg.threads:  # 0 = leave torch's default; for this whole process (see config.PipelineConfig.threads)
        torch.set_num_threads(cfg.threads)
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
    for stage in stages:
        if hasattr(stage, "preflight") and (not only or stage.NAME in only):
            stage.preflight(cfg)
    dist = dist or Dist.from_env(cfg.cache.device)
    ran = []
    if dist.is_main:
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        save_resolved_config(cfg)
    for stage in stages:
        if only and stage.NAME not in only:
            continue
        if dist.decide(not force and dist.is_main and is_fresh(cfg, stage)):
            if dist.is_main:
                console.print(f"[dim]{stage.NAME}: up to date, skipped[/dim]")
            continue
        if dist.is_main:
            console.print(f"[bold]{stage.NAME}[/bold]")
        t0 = time.perf_counter()
        state = _state(cfg, stage) if dist.is_main else None  # deps hashed before the run: what it was run on
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
            console.print(f"[green]{stage.NAME}: done in {time.perf_counter() - t0:.1f} s[/green]")
        ran.append(stage.NAME)
    return ran
