"""Remote reading benchmark: the student stream's rows/s from S3 (moto) and from HTTP ÷ from the local disk, same store.

    .venv/bin/python -m bench.remote_reading                  # pipeline.yaml's store, batch 100, 5 rounds
    .venv/bin/python -m bench.remote_reading --passes 2 --rounds 7

The benchmark store (the default pipeline's, made by the real cache_teacher stage, bench/out/store) is
uploaded to an S3 server (moto, `python -m moto.server`, in its own process so that it does not share this
process's GIL) and served by `python -m http.server`, both on 127.0.0.1. Each round reads `passes` passes over
the training rows through `BlockStream` as the student stage builds it (batch = student_train.batch_size,
window = distill.shuffle_window, every per-block check on: sha256 against the marker, ids, order, lse), a
fresh stream per round (its first window read on the clock), from the three locations in turn, order flipped
every round; reported: the median over rounds of remote ÷ local. Goal: >= 0.5 for each. Local reads come from
the page cache (warm), so the ratio is what the network path costs on top of the same work.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import alternate, apply_threads, median_ratio, pipeline_store, store_bench_args, summary, verdict
from kd_pipeline.store import open_store
from kd_pipeline.stream import BlockStream

GOAL = 0.5
BUCKET = "kd-bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(port: int, proc: subprocess.Popen, what: str) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start")


def servers(store: Path, log=print):
    """Starts moto (S3) and http.server on 127.0.0.1 in their own processes, uploads `store` to S3.
    -> (s3 URL, http URL, stop()). Sets the AWS_* environment the S3 client reads until stop()."""
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    s3_port, http_port = _free_port(), _free_port()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    http = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(http_port), "--directory", str(store.parent)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop() -> None:
        for p in (moto, http):
            p.terminate()
            p.wait(timeout=30)
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        _forget_clients()

    try:
        _wait(s3_port, moto, "moto server")
        _wait(http_port, http, "http.server")
        os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{s3_port}", AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret",
                          AWS_DEFAULT_REGION="us-east-1")
        import fsspec

        _forget_clients()  # fsspec caches filesystems by their arguments, not by the endpoint in the environment
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir(BUCKET)
        t0 = time.perf_counter()
        fs.put(str(store), f"{BUCKET}/{store.name}", recursive=True)
        log(f"uploaded {store} to s3://{BUCKET}/{store.name} in {time.perf_counter() - t0:.1f} s")
    except BaseException:
        stop()
        raise
    return f"s3://{BUCKET}/{store.name}", f"http://127.0.0.1:{http_port}/{store.name}", stop


def _forget_clients() -> None:
    from s3fs import S3FileSystem

    S3FileSystem.clear_instance_cache()


def run(out: Path, passes: float, rounds: int, sets: list[str] = (), log=print) -> dict:
    cfg = pipeline_store(out, *sets)
    local = Path(cfg.cache_path)
    with tempfile.TemporaryDirectory(prefix="kd-bench-remote-") as tmp:
        import shutil

        store_dir = Path(tmp) / "store"  # a copy without lock files, as one hands a store over
        shutil.copytree(local, store_dir, ignore=shutil.ignore_patterns("_lock*"))
        s3_url, http_url, stop = servers(store_dir, log)
        try:
            stores = {"local": open_store(store_dir), "s3": open_store(s3_url), "http": open_store(http_url)}
            m = stores["local"].manifest
            bs = cfg.student_train.batch_size
            train_rows = int(sum(n for s, n in m.dataset.split_sizes.items() if s != m.dataset.eval_split))
            n_batches = max(1, int(passes * train_rows) // bs)
            its: dict[str, object] = {}

            def fresh(name: str):
                def setup() -> None:
                    if name in its:
                        its[name].close()
                    its[name] = iter(BlockStream(stores[name], bs, cfg.distill.shuffle_window, cfg.seed))

                def read() -> int:
                    for _ in range(n_batches):
                        next(its[name])
                    return n_batches * bs

                return setup, read

            pairs = {name: fresh(name) for name in stores}
            fns = {name: read for name, (_, read) in pairs.items()}
            setup = {name: s for name, (s, _) in pairs.items()}
            for name, fn in fns.items():  # warm-up: page cache, connections, code paths
                setup[name]()
                fn()
            rates = alternate(fns, rounds, setup)
            for it in its.values():
                it.close()
            for s in stores.values():
                s.close()
        finally:
            stop()
    r_s3, r_http = median_ratio(rates, "s3", "local"), median_ratio(rates, "http", "local")
    log(f"store {m.num_rows} rows in {m.num_blocks} blocks of {m.chunk_rows}, batch {bs}, {n_batches} batches x {rounds} rounds: {summary(rates)}")
    log(f"  s3 / local = {r_s3:.3f}  {verdict(r_s3, GOAL)}")
    log(f"  http / local = {r_http:.3f}  {verdict(r_http, GOAL)}")
    return {"s3/local": r_s3, "http/local": r_http, "rates": rates}


def main(argv: list[str] | None = None) -> None:
    ap = store_bench_args(__doc__)
    ap.add_argument("--passes", type=float, default=2.0, help="passes over the training rows per timed call")
    a = ap.parse_args(argv)
    apply_threads(a)
    run(a.out, a.passes, a.rounds, a.sets)


if __name__ == "__main__":
    main()
