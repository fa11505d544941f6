"""Components are plain data: `{factory: "module:function", kwargs: {...}}`.

The factory is imported and its kwargs are bound against its signature when the config is loaded (so a typo
fails before any stage runs); the object is built only when a stage needs it. The working directory is
importable, as with `python -m`, pytest and uvicorn: `my_factories:net` finds ./my_factories.py.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any, Callable

from .errors import ConfigError


def resolve(spec: str, where: str) -> Callable[..., Any]:
    """Import `module:function`. `where` names the config key for the error message."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ConfigError(f"{where}: expected 'module:function', got {spec!r}")
    mod_name, attr = spec.split(":")
    _cwd_importable()
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # ImportError, or the module itself failing to import
        raise ConfigError(f"{where}: cannot import module {mod_name!r} ({type(e).__name__}: {e})") from e
    fn = mod
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise ConfigError(f"{where}: module {mod_name!r} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ConfigError(f"{where}: {spec!r} is not callable")
    return fn


def _cwd_importable() -> None:
    """Put the working directory first on sys.path, as `python -m` does; the `kd` script's own sys.path[0]
    is its bin folder, so without this a factory module next to pipeline.yaml needed PYTHONPATH=."""
    cwd = os.getcwd()
    if not any(os.path.abspath(p or ".") == cwd for p in sys.path):
        sys.path.insert(0, cwd)


def check_kwargs(fn: Callable[..., Any], kwargs: dict, where: str, injected: tuple[str, ...] = ()) -> None:
    """Bind kwargs (plus the names the pipeline injects, e.g. `split`, `num_classes`) to fn's signature."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # builtins without a signature: nothing to check
    for name in injected:
        if name in kwargs:
            raise ConfigError(f"{where}.kwargs.{name}: set by the pipeline, do not declare it here")
    params = sig.parameters
    takes_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    present = {n: None for n in injected if n in params or takes_var_kw}
    try:
        sig.bind(**kwargs, **present)
    except TypeError as e:
        raise ConfigError(f"{where}.kwargs: {e}") from e


def accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def call_factory(spec: str, where: str, **kwargs) -> Any:
    """Build a component: `spec` is "module:function". An exception raised in the user's own code becomes
    one line naming the factory and its message (exit 2), not an unexpected error."""
    from .errors import KDError

    fn = resolve(spec, where)
    try:
        return fn(**kwargs)
    except KDError:
        raise
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else ""
        raise ConfigError(f"{where}: {spec} raised {type(e).__name__}: {msg}") from e
