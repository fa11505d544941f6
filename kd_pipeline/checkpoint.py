"""Checkpoints are safetensors (no pickle): tensors plus string metadata (factory, kwargs as JSON)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model as st_save_model
from torch import nn

from .errors import KDError


def save_model(model: nn.Module, path: Path, meta: dict) -> None:
    """Same weights and meta -> same bytes (so a store's teacher.checkpoint_sha256 is reproducible)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # save_model (not save_file) stores tied weights (an LM's embedding = its output head) once
    st_save_model(model, str(tmp), metadata={k: json.dumps(v, sort_keys=True) for k, v in meta.items()})
    with open(tmp, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = canonical_header(f.read(n))
        if len(header) == n:  # the usual case: same keys in another order, same length
            f.seek(8)
            f.write(header)
        else:
            rest = f.read()
            f.seek(0)
            f.write(len(header).to_bytes(8, "little") + header + rest)
            f.truncate()
    os.replace(tmp, path)


def canonical_header(header: bytes) -> bytes:
    """A safetensors JSON header with its keys sorted, padded with spaces to a multiple of 8 bytes as the
    format requires. safetensors writes the header from a hash map, so the key order (and the file's bytes)
    changes from one process to the next; tensor offsets are relative to the data, so they stay valid."""
    text = json.dumps(json.loads(header), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return text + b" " * (-len(text) % 8)


def canonical_safetensors(data: bytes) -> bytes:
    """`safetensors.torch.save(...)` bytes with a canonical header (see canonical_header)."""
    n = int.from_bytes(data[:8], "little")
    header = canonical_header(data[8 : 8 + n])
    return len(header).to_bytes(8, "little") + header + data[8 + n :]


def load_model(model: nn.Module, path: Path, what: str) -> nn.Module:
    if not path.is_file():
        raise KDError(f"{path}: {what} checkpoint not found; run its training stage first")
    try:
        st_load_model(model, str(path), strict=True)
    except Exception as e:
        raise KDError(f"{path}: {what} checkpoint does not fit the configured model ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    return model


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_sha256(model: nn.Module) -> str:
    """Identity of a model's weights (for a teacher used as its factory builds it, with no checkpoint file)."""
    import torch

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_teacher(cfg) -> tuple[nn.Module, str]:
    """The trained teacher (<out>/teacher.safetensors), or without teacher_train the teacher as its factory
    builds it (e.g. a pretrained Hugging Face folder), frozen. -> (teacher, sha256 identifying its weights)."""
    from .models import build_model

    teacher = build_model(cfg.teacher, cfg.data.num_classes, "teacher", teacher_outputs(cfg))
    if cfg.teacher_train is None:
        return teacher.eval().requires_grad_(False), weights_sha256(teacher)
    path = cfg.out_dir / "teacher.safetensors"
    load_model(teacher, path, "teacher")
    return teacher.eval().requires_grad_(False), file_sha256(path)


def teacher_outputs(cfg) -> int | None:
    """The teacher's padded output width to cut (sequence.teacher_outputs), or None."""
    return cfg.sequence.teacher_outputs if cfg.kind == "sequence" else None
