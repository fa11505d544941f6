"""Several processes through torchrun (gloo on CPU, loopback only): the teacher pass split between ranks writes
the same store as one process, bit for bit; a rank killed mid-pass is completed by rerunning the same command;
the DDP student resumes after a kill; writers started at the same instant on a new store never refuse each
other."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import load_file

from kd_pipeline.config import load_config
from kd_pipeline.runner import run_pipeline
from tests.conftest import tiny_config, write_config
from tests.test_crash_resume import ARRAYS, same_store

KD = str(Path(sys.executable).with_name("kd"))


def torchrun(yaml_path: Path, *stages: str, env: dict | None = None, wait: bool = True):
    """`torchrun --nproc_per_node=2 kd run YAML --stage …` on 127.0.0.1 (a free port), one thread per rank."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1", "--rdzv_backend=c10d",
           f"--rdzv_endpoint=127.0.0.1:{port}", KD, "run", str(yaml_path), *[a for s in stages for a in ("--stage", s)]]
    e = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1", **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    r = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def kill_a_rank_at(yaml_path: Path, stage: str, point: str, tmp: Path) -> tuple[int, str]:
    """torchrun the stage; the first rank to reach pause point `point` is killed with SIGKILL there.
    -> torchrun's exit code and output once it has stopped the group."""
    flag = tmp / "paused"
    p = torchrun(yaml_path, stage, env={"KD_PAUSE_AT": point, "KD_PAUSE_FILE": str(flag)}, wait=False)
    deadline = time.monotonic() + 300
    while not flag.exists():
        assert p.poll() is None, p.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(int(flag.read_text()), signal.SIGKILL)
    out = p.communicate(timeout=120)[0]
    return p.returncode, out


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """A tiny run whose store was written by one process (one torch thread, as each torchrun rank has)."""
    d = tmp_path_factory.mktemp("dist")
    y = write_config(d / "one.yaml", tiny_config(d / "run", **{"cache.path": str(d / "cache1"), "student_train.checkpoint_every": 10}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_pipeline(load_config(y), only=["prepare_data", "train_teacher", "cache_teacher"])
    finally:
        torch.set_num_threads(threads)
    return d, y


def _two(d: Path, name: str, **over) -> Path:
    return write_config(d / f"{name}.yaml", tiny_config(d / "run", **{"cache.path": str(d / name), "student_train.checkpoint_every": 10, **over}))


def test_two_ranks_write_the_one_process_store_bit_for_bit(one_process):
    d, _ = one_process
    y = _two(d, "cache2")
    r = torchrun(y, "cache_teacher")
    assert "cache_teacher: done" in r.stdout + r.stderr
    same_store(d / "cache1", d / "cache2")
    assert not list((d / "cache2" / "_markers").glob("samples-*.parquet"))  # folded into samples.parquet


def test_a_rank_killed_mid_pass_is_completed_by_rerunning(one_process, tmp_path):
    d, _ = one_process
    y = _two(d, "cache-killed")
    # block 3 belongs to rank 1 (b % 2 == 1): rank 1 stops there with its chunks written, its marker not
    code, out = kill_a_rank_at(y, "cache_teacher", "block_chunks:3", tmp_path)
    assert code != 0, out  # torchrun saw its worker die and stopped the group
    store = d / "cache-killed"
    assert not zarr.open_group(str(store), mode="r").attrs["kd_cache"]["complete"]
    assert not (store / "_markers" / "block-00000003.json").exists()
    torchrun(y, "cache_teacher")  # the same command again
    same_store(d / "cache1", store)


def test_ddp_student_resumes_after_a_kill(one_process, tmp_path):
    d, _ = one_process
    ref = write_config(tmp_path / "ref.yaml", tiny_config(tmp_path / "ref", **{"cache.path": str(d / "cache1"), "student_train.checkpoint_every": 10}))
    shutil.copytree(d / "run" / "data", tmp_path / "ref" / "data")
    torchrun(ref, "train_student")  # never stopped
    y = write_config(tmp_path / "p.yaml", tiny_config(tmp_path / "run", **{"cache.path": str(d / "cache1"), "student_train.checkpoint_every": 10}))
    shutil.copytree(d / "run" / "data", tmp_path / "run" / "data")
    kill_a_rank_at(y, "train_student", "checkpoint:train_student:20", tmp_path)
    ckpt = tmp_path / "run" / ".kd" / "ckpt" / "train_student.safetensors"
    assert ckpt.is_file() and not (tmp_path / "run" / "student.safetensors").exists()
    assert {"rng.torch.0", "rng.torch.1"} <= set(load_file(str(ckpt)))  # both ranks' RNG states
    r = torchrun(y, "train_student")
    assert "train_student: resumed from the checkpoint at step 20" in r.stdout + r.stderr
    got, want = load_file(str(tmp_path / "run" / "student.safetensors")), load_file(str(tmp_path / "ref" / "student.safetensors"))
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].numpy().tobytes() == want[k].numpy().tobytes(), k


def _open_and_write(manifest_json: str, store: str, shard: int, go: str) -> None:
    """One of two writers of a new store: says it is ready, spins until `go` exists, opens, writes its blocks."""
    import json

    from kd_pipeline.store import CacheWriter, Manifest

    m = Manifest.model_validate(json.loads(manifest_json))
    open(f"{go}.ready{shard}", "w").close()
    while not os.path.exists(go):  # spin: both start within microseconds of each other
        pass
    with CacheWriter.open(store, m, shard=shard, num_shards=2) as w:
        for b in w.pending_blocks(shard, 2):
            s, e = w.block_rows(b)
            w.write_block(b, {k: np.zeros((e - s, *shape[1:]), dtype) for k, (shape, dtype) in w.specs.items()})


def test_writers_started_at_the_same_instant_never_refuse_each_other(tmp_path):
    """Two shards of a new store opened at the same instant, 10 times: the first creates it, the other waits
    its turn and resumes it (store/lock.py `creating`); neither is refused. Without that lock this fails."""
    import json
    import multiprocessing as mp

    from tests.test_store import manifest

    ctx = mp.get_context("forkserver")  # a clean process that imports once and forks the writers fast
    ctx.set_forkserver_preload(["kd_pipeline.store", "tests.test_distributed"])
    m = json.dumps(manifest(num_rows=64, chunk_rows=8).model_dump(mode="json"))
    for i in range(10):
        store, go = tmp_path / f"s{i}", tmp_path / f"go{i}"
        procs = [ctx.Process(target=_open_and_write, args=(m, str(store), shard, str(go))) for shard in (0, 1)]
        for p in procs:
            p.start()
        while not all(Path(f"{go}.ready{s}").exists() for s in (0, 1)):
            assert all(p.is_alive() for p in procs)
            time.sleep(0.005)
        go.touch()
        for p in procs:
            p.join(timeout=120)
        assert [p.exitcode for p in procs] == [0, 0], f"round {i}: a writer was refused (its error is above)"
        assert len(list((store / "_markers").glob("block-*.json"))) == 8
