"""Remote stores on real servers on 127.0.0.1 (tests/remote_servers.py): the teacher pass writes to s3:// (moto),
`kd verify`/`kd inspect` and students read it with every local check; a flipped byte in one S3 chunk is refused
naming its array and block; a consumer trains from http://; an object-store lock is one writer at a time; no
credential reaches any file the run writes."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kd_pipeline.cli import app
from kd_pipeline.config import load_config
from kd_pipeline.errors import StoreError
from kd_pipeline.runner import run_pipeline
from kd_pipeline.store import CacheWriter, open_store
from kd_pipeline.store.location import FsPath, as_location
from tests.conftest import tiny_config, write_config
from tests.remote_servers import http_server, s3_server
from tests.test_refusals import one_error_line
from tests.test_sharing import consumer_config
from tests.test_store import blocks_for, manifest

runner = CliRunner()
BUCKET = "kd-test"


@pytest.fixture(scope="module")
def s3():
    with s3_server(BUCKET) as (endpoint, secret):
        yield {"endpoint": endpoint, "secret": secret, "fs": fsspec.filesystem("s3", skip_instance_cache=True)}


@pytest.fixture(scope="module")
def s3_run(s3, tmp_path_factory):
    """The tiny pipeline, end to end, with its store on S3 and one more secret in cache.storage_options."""
    d = tmp_path_factory.mktemp("s3-run")
    url = f"s3://{BUCKET}/runs/tiny/cache"
    option_secret = "kd-option-secret-" + uuid.uuid4().hex
    cfg = tiny_config(d / "run", **{"cache.path": url, "cache.storage_options": {"key": "kd-test-key-id", "secret": option_secret}})
    p = write_config(d / "pipeline.yaml", cfg)
    r = runner.invoke(app, ["run", str(p)])
    assert r.exit_code == 0, r.output
    return {"dir": d, "url": url, "pipeline": p, "secrets": [s3["secret"], option_secret], "output": r.output}


def test_s3_store_written_verified_and_read_by_the_student(s3, s3_run):
    fs, url = s3["fs"], s3_run["url"]
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(url, detail=False)}
    assert {"zarr.json", "samples.parquet", "_markers", "topk_logits", "lse"} <= names and not any(n.startswith("_lock") for n in names)
    r = runner.invoke(app, ["verify", url])
    assert r.exit_code == 0 and r.output.startswith(f"{url}: OK"), r.output
    assert "checked blocks: 8 of 8 match their sha256 markers" in r.output
    r = runner.invoke(app, ["inspect", url, "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["manifest"]["complete"], r.output
    run = s3_run["dir"] / "run"
    student = json.loads((run / "metrics.json").read_text())
    assert student["from_store"]["store"] == url and student["from_store"]["rows"] == 400
    # the store read back from S3 equals, block for block, what a local copy of it holds
    local = s3_run["dir"] / "copy"
    fs.get(url, str(local), recursive=True)
    a, b = open_store(url), open_store(local)
    for blk in range(a.num_blocks):
        x, y = a.read_block(blk), b.read_block(blk)
        assert all(np.array_equal(x[k], y[k]) for k in x)
    assert a.samples.table().equals(b.samples.table())


def test_no_secret_in_any_file_the_run_writes(s3, s3_run):
    files = [p for p in (s3_run["dir"] / "run").rglob("*") if p.is_file()] + [s3_run["pipeline"]]
    objects = s3["fs"].find(f"{BUCKET}/runs")
    assert len(files) > 10 and len(objects) > 20
    for secret in s3_run["secrets"]:
        for p in files:
            if p != s3_run["pipeline"]:  # the YAML the user wrote holds the option secret, as given
                assert secret.encode() not in p.read_bytes(), p
        for o in objects:
            assert secret.encode() not in s3["fs"].cat_file(o), o
        assert secret not in s3_run["output"]
    resolved = json.loads((s3_run["dir"] / "run" / ".kd" / "pipeline.json").read_text())
    assert "storage_options" not in resolved["cache"]


def test_an_error_message_never_shows_a_secret(s3, s3_run, tmp_path):
    secret = s3_run["secrets"][1]
    d = consumer_config(tmp_path / "run", f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x")
    d["cache"]["storage_options"] = {"secret": secret, "key": "k"}
    msg = one_error_line(runner.invoke(app, ["run", str(write_config(tmp_path / "c.yaml", d))]))
    assert "holds no store" in msg and secret not in msg


def test_flipped_byte_in_an_s3_chunk_is_refused(s3, s3_run, tmp_path):
    fs = s3["fs"]
    bad = f"s3://{BUCKET}/damaged/{uuid.uuid4().hex[:8]}"
    fs.copy(s3_run["url"], bad, recursive=True)
    chunk = f"{bad}/features/penultimate/c/2/0"  # a training block; features have no content check but the sha256
    data = bytearray(fs.cat_file(chunk))
    data[100] ^= 0x20
    fs.pipe_file(chunk, bytes(data))
    r = runner.invoke(app, ["verify", bad])
    assert r.exit_code == 2
    assert r.output.splitlines() == [f"problem: {bad}: array features/penultimate block 2 (rows 512..768): sha256 does not match its marker (corrupt chunk)"]
    # 40 x 50 samples: every training block; the loss reads the feature, so the student reads and checks it
    d = consumer_config(tmp_path / "run", bad, **{"student_train.steps": 40, "distill.feature": {"cached": "penultimate", "student_module": "body"}})
    msg = one_error_line(runner.invoke(app, ["run", str(write_config(tmp_path / "c.yaml", d)), "--stage", "train_student"]))
    assert msg == f"{bad}: array features/penultimate block 2 (rows 512..768): bytes do not match the block's sha256 (corrupt chunk)"


def test_consumer_trains_from_http_and_http_is_read_only(tiny_run, tmp_path):
    served = tmp_path / "served"
    shutil.copytree(load_config(tiny_run).cache_path, served / "store", ignore=shutil.ignore_patterns("_lock*"))
    with http_server(served) as base:
        url = f"{base}/store"
        # one DataLoader worker: started by forkserver, never forked from a process holding an HTTP client
        d = consumer_config(tmp_path / "run", url, **{"student_train.steps": 20, "data.num_workers": 1})
        r = runner.invoke(app, ["run", str(write_config(tmp_path / "c.yaml", d))])
        assert r.exit_code == 0, r.output
        m = json.loads((tmp_path / "run" / "metrics.json").read_text())
        assert m["from_store"]["store"] == url and m["from_store"]["rows"] == 400 and set(m["models"]) == {"student", "baseline"}
        r = runner.invoke(app, ["verify", url])
        assert r.exit_code == 0, r.output
        p = write_config(tmp_path / "p.yaml", tiny_config(tmp_path / "producer", **{"cache.path": url}))
        msg = one_error_line(runner.invoke(app, ["run", str(p)]))
        assert msg == f"{url}: http stores are read-only; write the store to a local folder or an object store (s3://, gs://)"


def test_s3_lock_object_one_writer_at_a_time_and_resume(s3):
    url = f"s3://{BUCKET}/locks/{uuid.uuid4().hex[:8]}"
    m = manifest(num_rows=1000)
    blocks = blocks_for(m, torch.randn(1000, 10))
    w = CacheWriter.open(url, m)
    w.write_block(0, blocks[0])
    w.write_block(2, blocks[2])
    with pytest.raises(StoreError, match=rf"^{url}: another writer holds the store lock \(pid {os.getpid()} on host .*\); wait for it to finish, "
                                         rf"or stop it\. Object stores have no flock: if that writer is gone, delete {url}/_lock.json and rerun$"):
        CacheWriter.open(url, m)
    w.close()  # released: the lock object is deleted
    assert not s3["fs"].exists(f"{url}/_lock.json")
    w = CacheWriter.open(url, m)  # resumes: the marked blocks are kept
    assert w.pending_blocks() == [1, 3]
    w.close()
    # a lock object left by a writer that died on this host is taken over
    dead = json.dumps({"pid": 2**22 + 12345, "host": os.uname().nodename, "started_at": "then", "shard": "0/1"})
    s3["fs"].pipe_file(f"{url}/_lock.json", dead.encode())
    w = CacheWriter.open(url, m)
    assert [i["pid"] for i in w.lock.taken_over] == [2**22 + 12345]
    w.close()


def test_location_names(s3):
    p = as_location("s3://kd-test/a/b")
    assert isinstance(p, FsPath) and str(p) == "s3://kd-test/a/b" and str(p / "c" / "d.json") == "s3://kd-test/a/b/c/d.json"
    assert str(as_location("https://user:pw@example.org/x")) == "https://example.org/x"  # no credentials in any message
    assert as_location("runs/x") == Path("runs/x") and as_location("file:///tmp/x") == Path("/tmp/x")


def test_remote_reading_benchmark_smallest(tmp_path):
    """bench/remote_reading.py end to end at its smallest size, so it cannot rot (figures: docs/benchmarks.md)."""
    from bench import remote_reading

    tiny = ["data.kwargs.num_samples=2000", "data.kwargs.labelled=400", "data.kwargs.seed=7", "teacher.kwargs.channels=8",
            "student.kwargs.hidden=[16]", "cache.chunk_rows=256"]
    env = dict(os.environ)
    r = remote_reading.run(tmp_path / "store", passes=0.2, rounds=1, sets=tiny, log=lambda s: None)
    assert all(np.isfinite(r[k]) and r[k] > 0 for k in ("s3/local", "http/local"))
    assert dict(os.environ) == env  # the servers' AWS_* settings are gone again
