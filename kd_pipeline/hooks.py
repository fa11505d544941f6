"""Capturing named modules' outputs with forward hooks (feature-based KD)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from .errors import ConfigError


def get_module(model: nn.Module, path: str, where: str, owner: str = "model") -> nn.Module:
    """The submodule at `path`; ConfigError naming `where` (the config key that holds `path`) and `owner`."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n][:12]
        raise ConfigError(f"{where}: no module {path!r} in the {owner} (some are: {', '.join(names)})") from None


@contextmanager
def capture(model: nn.Module, modules: dict[str, str], where: str, owner: str = "model") -> Iterator[dict[str, torch.Tensor]]:
    """Yields a dict that each forward fills with name -> output of the module at that path.

    `modules` is the config mapping at key `where` (name -> module path), so errors name `where.name`, the
    key the user wrote; `owner` ("teacher", "student") says in which model the path was looked up."""
    out: dict[str, torch.Tensor] = {}
    handles = []
    for name, path in modules.items():
        mod = get_module(model, path, f"{where}.{name}", owner)

        def hook(_m, _inp, output, name=name):
            out[name] = output if isinstance(output, torch.Tensor) else output[0]

        handles.append(mod.register_forward_hook(hook))
    try:
        yield out
    finally:
        for h in handles:
            h.remove()
