"""Built-in model factories. Every model exposes `body` (features) and `head` (the classifier), so
`body` is the penultimate layer for feature distillation."""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    def __init__(self, body: nn.Module, head: nn.Module):
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def conv1d_net(num_classes: int, channels: int = 32, length: int = 40) -> Classifier:
    """MNIST-1D's CNN (Greydanus 2020): convs k=5,3,3 with stride 2, ReLU, then linear.
    Input (B, length) -> logits (B, num_classes)."""
    layers: list[nn.Module] = [nn.Unflatten(1, (1, length))]
    c_in, l_out = 1, length
    for kernel in (5, 3, 3):
        layers += [nn.Conv1d(c_in, channels, kernel, stride=2, padding=1), nn.ReLU()]
        c_in, l_out = channels, (l_out + 2 - kernel) // 2 + 1
    layers.append(nn.Flatten())  # body output: (B, channels * l_out) = (B, 160) at the defaults
    return Classifier(nn.Sequential(*layers), nn.Linear(channels * l_out, num_classes))


def mlp(num_classes: int, in_features: int = 40, hidden: tuple[int, ...] = (100, 100)) -> Classifier:
    """MLP in_features-hidden...-num_classes with ReLU; body output is the last hidden layer."""
    layers: list[nn.Module] = [nn.Flatten()]
    d = in_features
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    return Classifier(nn.Sequential(*layers), nn.Linear(d, num_classes))


def build_model(component, num_classes: int) -> nn.Module:
    from .components import accepts, resolve

    fn = resolve(component.factory, "factory")
    kwargs = dict(component.kwargs)
    if accepts(fn, "num_classes"):
        kwargs["num_classes"] = num_classes
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{component.factory} returned {type(model).__name__}, not an nn.Module")
    return model
