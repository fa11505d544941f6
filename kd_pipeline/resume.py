"""Resumable training: a checkpoint every `checkpoint_every` steps, so a killed run goes on from there.

`<out>/.kd/ckpt/<stage>.safetensors` (no pickle) holds, as tensors: every trained parameter (`param.<i>`, in
the order given to the optimizer), every module buffer (`buffer.<module>.<name>`), the optimizer state
(`opt.<i>.<key>`, e.g. Adam's step/exp_avg/exp_avg_sq), the torch RNG state of every rank (`rng.torch.<rank>`);
as metadata: the step, the loss-curve points so far and the partial averages, and an identity (hash of the
stage's config, inputs and number of processes). A checkpoint with another identity is ignored, so changed
parameters never resume a stale run. Under torchrun rank 0 writes it (parameters and optimizer state are the
same on every rank after each DDP step; the RNG states are gathered) and every rank reads it.

Batches are not saved: the batch iterators are deterministic given the seed, so on resume the first `step`
batches are drawn again and dropped (no forward pass; a few ms per thousand steps here), which leaves them,
and the run, exactly where the checkpoint was. A resumed run therefore ends with the same weights, bit for
bit, as one that was never stopped (tests/test_train_resume.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load, save
from torch import nn

from .checkpoint import canonical_safetensors
from .store.files import atomic_write


def identity(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class TrainCheckpoint:
    def __init__(self, path: Path, every: int, ident: str, modules: dict[str, nn.Module]):
        self.path = path
        self.every = every  # steps; 0 = never
        self.ident = ident
        self.modules = modules  # for their buffers (parameters come from the optimizer's list)

    def due(self, step: int, last: int) -> bool:
        return self.every > 0 and step % self.every == 0 and step < last

    def save(self, step: int, params: list[torch.Tensor], opt: torch.optim.Optimizer, state: dict, dist=None) -> None:
        rngs = _gather_rng(dist)
        if dist is not None and not dist.is_main:
            return
        t = {f"param.{i}": p.detach().cpu().contiguous() for i, p in enumerate(params)}
        for m, mod in self.modules.items():
            t.update({f"buffer.{m}.{n}": b.detach().cpu().contiguous() for n, b in mod.named_buffers()})
        for i, p in enumerate(params):
            for k, v in opt.state.get(p, {}).items():
                t[f"opt.{i}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
        t.update({f"rng.torch.{r}": g for r, g in enumerate(rngs)})
        meta = {"identity": self.ident, "step": str(step), "state": json.dumps(state)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, canonical_safetensors(save(t, metadata=meta)))  # same state -> same bytes

    def restore(self, params: list[torch.Tensor], opt: torch.optim.Optimizer, dist=None) -> tuple[int, dict] | None:
        """Loads a matching checkpoint into params/buffers/optimizer/RNG; -> (step, state) or None."""
        if not self.path.is_file():
            return None
        data = self.path.read_bytes()
        try:
            n = int.from_bytes(data[:8], "little")
            meta = json.loads(data[8 : 8 + n]).get("__metadata__", {})
            if meta.get("identity") != self.ident:
                return None
            t = load(data)
        except Exception:
            return None  # unreadable (e.g. from another version): start over rather than fail
        with torch.no_grad():
            for i, p in enumerate(params):
                p.copy_(t[f"param.{i}"])
            for m, mod in self.modules.items():
                for n_, b in mod.named_buffers():
                    b.copy_(t[f"buffer.{m}.{n_}"])
        sd = opt.state_dict()
        sd["state"] = {}
        for key, v in t.items():
            if key.startswith("opt."):
                _, i, k = key.split(".", 2)
                sd["state"].setdefault(int(i), {})[k] = v
        opt.load_state_dict(sd)
        torch.set_rng_state(t[f"rng.torch.{dist.rank if dist is not None else 0}"])
        return int(meta["step"]), json.loads(meta["state"])

    def remove(self, dist=None) -> None:
        if dist is not None:
            dist.barrier()  # every rank has read it before it goes
            if not dist.is_main:
                return
        self.path.unlink(missing_ok=True)


def _gather_rng(dist) -> list[torch.Tensor]:
    """Every rank's torch RNG state, in rank order (a collective: all ranks call it)."""
    mine = torch.get_rng_state()
    if dist is None or not dist.active:
        return [mine]
    import torch.distributed as td

    dev = f"cuda:{torch.cuda.current_device()}" if td.get_backend() == "nccl" else "cpu"
    out = [torch.empty_like(mine, device=dev) for _ in range(dist.world)]
    td.all_gather(out, mine.to(dev))
    return [o.cpu() for o in out]
