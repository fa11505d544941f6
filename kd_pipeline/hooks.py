"""Capturing named modules' outputs with forward hooks (feature-based KD)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from .errors import ConfigError


def get_module(model: nn.Module, path: str, where: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n][:12]
        raise ConfigError(f"{where}: no module {path!r} in the model (some are: {names})") from None


@contextmanager
def capture(model: nn.Module, modules: dict[str, str], where: str) -> Iterator[dict[str, torch.Tensor]]:
    """Yields a dict that each forward fills with name -> output of the module at that path."""
    out: dict[str, torch.Tensor] = {}
    handles = []
    for name, path in modules.items():
        mod = get_module(model, path, f"{where}.{name}")

        def hook(_m, _inp, output, name=name):
            out[name] = output if isinstance(output, torch.Tensor) else output[0]

        handles.append(mod.register_forward_hook(hook))
    try:
        yield out
    finally:
        for h in handles:
            h.remove()
