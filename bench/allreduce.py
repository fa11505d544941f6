"""What one DDP step's gradient all-reduce costs here: `torch.distributed.all_reduce` of a float32 tensor the
size of each benchmark student's parameters, gloo, the ranks of a torchrun group, median of 200 calls.

    OMP_NUM_THREADS=1 GLOO_SOCKET_IFNAME=lo .venv/bin/torchrun --nproc_per_node=2 --rdzv_backend=c10d \\
        --rdzv_endpoint=127.0.0.1:29533 -m bench.allreduce

Sizes: the pipeline.yaml student (MLP 40-100-100-10, 15,210 parameters) and the 1024-wide one (40-1024-1024-10,
1,101,834). DistributedDataParallel reduces the same number of floats per step (in buckets, overlapped with
the backward pass where it can).
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.distributed as td

SIZES = {"pipeline student": 15_210, "1024-wide student": 1_101_834}


def main() -> None:
    td.init_process_group("gloo")
    for name, n in SIZES.items():
        t = torch.zeros(n)
        for _ in range(10):  # warm-up: connections, buffers
            td.all_reduce(t)
        times = []
        for _ in range(200):
            td.barrier()
            t0 = time.perf_counter()
            td.all_reduce(t)
            times.append(time.perf_counter() - t0)
        if td.get_rank() == 0:
            print(f"{name}: all_reduce of {n:,} float32 over {td.get_world_size()} ranks: median {1e3 * statistics.median(times):.3f} ms, "
                  f"90th percentile {1e3 * sorted(times)[179]:.3f} ms", flush=True)
    td.destroy_process_group()


if __name__ == "__main__":
    main()
