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


def conv2d_net(num_classes: int, channels: tuple[int, ...] = (16, 32), in_channels: int = 1, size: int = 28) -> Classifier:
    """A small image CNN: per entry of `channels`, conv 3x3 (padding 1) + ReLU + 2x2 max-pool; then linear.
    Input (B, in_channels, size, size) -> logits (B, num_classes); body output (B, channels[-1] * s * s),
    s = size halved (floor) once per conv."""
    layers: list[nn.Module] = []
    c, s = in_channels, size
    for ch in channels:
        layers += [nn.Conv2d(c, ch, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        c, s = ch, s // 2
    layers.append(nn.Flatten())
    return Classifier(nn.Sequential(*layers), nn.Linear(c * s * s, num_classes))


def mlp(num_classes: int, in_features: int = 40, hidden: tuple[int, ...] = (100, 100)) -> Classifier:
    """MLP in_features-hidden...-num_classes with ReLU; body output is the last hidden layer."""
    layers: list[nn.Module] = [nn.Flatten()]
    d = in_features
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    return Classifier(nn.Sequential(*layers), nn.Linear(d, num_classes))


def build_model(component, num_classes: int, where: str = "model", outputs: int | None = None) -> nn.Module:
    """The model a component builds; `num_classes` is passed if the factory takes it. where: the config key
    ("teacher", "student") that errors name. outputs: the width of a padded output head (> num_classes; the
    factory gets num_classes=outputs): a forward hook cuts the logits to the first num_classes, so everything
    downstream (training, the teacher pass, evaluation) sees only the tokenizer's ids, and module paths (for
    cache.features) stay as the factory named them. Raises ConfigError if the factory raises or returns no Module."""
    from .components import accepts, call_factory, resolve
    from .errors import ConfigError

    kwargs = dict(component.kwargs)
    if accepts(resolve(component.factory, f"{where}.factory"), "num_classes"):
        kwargs["num_classes"] = outputs or num_classes
    model = call_factory(component.factory, f"{where}.factory", **kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{where}.factory: {component.factory} returned {type(model).__name__}, not a torch.nn.Module")
    if outputs is not None:
        model.register_forward_hook(_CutLogits(num_classes, outputs, where))
    return model


class _CutLogits:
    """Forward hook: (..., outputs) logits -> (..., num_classes). A picklable class, not a lambda (DataLoader
    workers and deepcopy)."""

    def __init__(self, num_classes: int, outputs: int, where: str):
        self.num_classes, self.outputs, self.where = num_classes, outputs, where

    def __call__(self, module, args, out):
        if not torch.is_tensor(out) or out.shape[-1] != self.outputs:
            from .errors import ConfigError

            got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ConfigError(f"{self.where}: sequence.teacher_outputs is {self.outputs}, the model's output is {got}")
        return out[..., : self.num_classes]


@torch.no_grad()
def check_output(model: nn.Module, batch: dict, kind, num_classes: int, where: str) -> None:
    """One forward on a sample batch: the model runs, and its rows have num_classes logits. A model with 14
    outputs for 10 classes would otherwise train silently with mass on classes that do not exist."""
    from .errors import ConfigError

    was = model.training
    model.eval()
    try:
        out = model(batch["x"])
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else ""
        raise ConfigError(f"{where}: the model raised {type(e).__name__} on a batch of the data: {msg}") from e
    finally:
        model.train(was)
    if not torch.is_tensor(out):
        raise ConfigError(f"{where}: the model returned {type(out).__name__}, expected a tensor of logits")
    rows = kind.rows(out, batch)
    if rows.dim() != 2 or rows.shape[1] != num_classes:
        hint = f"; a padded head? set sequence.teacher_outputs: {rows.shape[-1]} to cut it" if where == "teacher" and rows.shape[-1] > num_classes else ""
        raise ConfigError(f"{where}: the model's output has shape {tuple(out.shape)}: {rows.shape[-1]} logits per row, "
                          f"data.num_classes is {num_classes}{hint}")
