"""Several processes on one or more machines, through torchrun and torch.distributed (no launcher of our own).

`torchrun --nproc_per_node=N [--nnodes=M --node_rank=i --rdzv_endpoint=host:port] -m kd_pipeline.cli run …`
(or the `kd` script: `torchrun … $(which kd) run …`) sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous;
`Dist.from_env()` finds them and joins the process group: gloo on CPU, nccl when the stage runs on CUDA. One
process without those variables is a group of one, and every call here is then a no-op.

Who does what under torchrun: the teacher pass splits the store's blocks between ranks (rank r writes blocks
b with b % world == r) and rank 0 finalises; training stages run DistributedDataParallel, each rank streaming
its own share; data preparation, evaluation and the stage stamps are rank 0's, the others wait at a barrier.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, TypeVar
import torch
import torch.distributed as td

from .errors import KDError

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @classmethod
    def from_env(cls, device: str = "auto") -> "Dist":
        """Joins the torchrun process group if this process was started by torchrun, else a group of one.
        device: the teacher pass's `cache.device` ("auto" = cuda if available): picks nccl or gloo."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available() and device in ("auto", "cuda") or device.startswith("cuda")
        if not td.is_initialized():
            if cuda:
                torch.cuda.set_device(local)
            # a long timeout: rank 0 alone prepares data and evaluates while the others wait at a barrier
            td.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(hours=6))
        return cls(rank, world, local)

    def barrier(self) -> None:
        if self.active:
            td.barrier()

    def decide(self, flag: bool) -> bool:
        """rank 0's `flag` on every rank: a decision all ranks must share (is this stage fresh?). A tensor, not
        broadcast_object_list, which would unpickle what it receives."""
        if not self.active:
            return flag
        t = _flag(1 if flag else 0)
        td.broadcast(t, src=0)
        return bool(int(t))

    def all_ok(self, ok: bool) -> bool:
        """True on every rank iff `ok` on every rank (a rank that failed makes the others stop too)."""
        if not self.active:
            return ok
        t = _flag(0 if ok else 1)
        td.all_reduce(t)
        return int(t) == 0

    def together(self, fn: Callable[[], T], first: int | None = None) -> T:
        """fn() on every rank (rank `first` before the others, if given). If it raises on any rank, every rank
        stops: the failing one with its own error, the others with a one-line note, instead of waiting at a
        barrier for the failed rank until the timeout."""
        if not self.active:
            return fn()
        if first is not None and self.rank != first and not self.all_ok(True):
            raise KDError(f"rank {self.rank}: rank {first} failed before this rank could start (its error is above)")
        try:
            result, error = fn(), None
        except Exception as e:
            result, error = None, e
        ok = self.all_ok(error is None)
        if first is not None and self.rank == first and error is None:
            ok = self.all_ok(True)  # the others' turn
        if error is not None:
            raise error
        if not ok:
            raise KDError(f"rank {self.rank}: another rank failed (its error is above)")
        return result

    def close(self) -> None:
        if self.active and td.is_initialized():
            td.destroy_process_group()


def _flag(v: int) -> torch.Tensor:
    """A one-element tensor where the backend can send it (nccl: this rank's GPU; gloo: the CPU)."""
    dev = f"cuda:{torch.cuda.current_device()}" if td.get_backend() == "nccl" else "cpu"
    return torch.tensor([v], dtype=torch.int64, device=dev)


def device_for(dist: Dist, device: str) -> torch.device:
    """The stage's device: "auto" = this rank's GPU when there is one, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    d = torch.device(device)
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", dist.local_rank)
    return d
