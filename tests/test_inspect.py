"""`kd inspect`: bytes per row with features, size on disk, and the teacher's entropy and confidence, checked
against the teacher's full logits recomputed from its checkpoint."""

import json
import os

import numpy as np
import torch
from typer.testing import CliRunner

from kd_pipeline.checkpoint import load_model
from kd_pipeline.cli import app
from kd_pipeline.config import load_config
from kd_pipeline.models import build_model
from kd_pipeline.store import open_store
from tests.conftest import inputs_in_row_order

runner = CliRunner()


def test_inspect_counts_features_disk_size_and_the_teachers_entropy(tiny_run):
    cfg = load_config(tiny_run)
    r = runner.invoke(app, ["inspect", str(cfg.cache_path), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)

    store = open_store(cfg.cache_path)
    m = store.manifest
    R = m.num_rows
    per_array = {name: a.nbytes // R for name, a in store.arrays.items()}
    feature = int(np.prod(m.features["penultimate"].shape)) * 2  # float16 (conv1d_net body, 8 channels)
    assert info["target_bytes_per_row"] == 3 * 2 + 3 * 2 + 2 * 4
    assert info["feature_bytes_per_row"] == per_array["features/penultimate"] == feature
    assert info["bytes_per_row"] == sum(per_array.values()) == 20 + feature
    on_disk = sum(e.stat().st_size for e in _walk(cfg.cache_path))
    assert info["store_bytes"] == on_disk >= R * info["bytes_per_row"]  # chunks are stored uncompressed

    # the teacher's full distribution at temperatures[0], recomputed from its checkpoint for the same rows
    x_rows = inputs_in_row_order(cfg, store)
    teacher = load_model(build_model(cfg.teacher, cfg.data.num_classes), cfg.out_dir / "teacher.safetensors", "teacher").eval()
    with torch.no_grad():
        p = torch.softmax(teacher(x_rows).double() / m.temperatures[0], dim=1)
    top, _ = p.sort(dim=1, descending=True)
    stored, tail = top[:, : m.top_k], 1 - top[:, : m.top_k].sum(dim=1)
    bucket_entropy = -(stored * stored.log()).sum(1) - tail * tail.clamp_min(1e-300).log()
    full_entropy = -(p * p.clamp_min(1e-300).log()).sum(1)
    t = info["teacher"]
    assert t["temperature"] == 1.0 and t["rows"] == R
    assert abs(t["mean_confidence"] - float(top[:, 0].mean())) < 2e-3  # fp16 logits in the store
    assert abs(t["mean_entropy_nats"] - float(bucket_entropy.mean())) < 5e-3
    assert t["mean_entropy_nats"] <= float(full_entropy.mean())  # the stated lower bound
    assert float(full_entropy.mean()) - float(bucket_entropy.mean()) > 1e-3  # and the bound is not the full entropy here
    store.close()

    r = runner.invoke(app, ["inspect", str(cfg.cache_path)], env={"COLUMNS": "300"})
    assert r.exit_code == 0
    assert f"all arrays {20 + feature} B/row (targets 20 + features {feature})" in r.output
    assert "entropy over stored ids + tail bucket: a lower bound" in r.output and "(top-1 probability)" in r.output


def _walk(path):
    for e in os.scandir(path):
        if e.is_dir(follow_symlinks=False):
            yield from _walk(e.path)
        else:
            yield e


def test_teacher_stats_of_sequence_stores_all_value_schemes(tmp_path):
    from kd_pipeline.inspect import teacher_stats
    from tests.test_sequence_store import seq_manifest, write_store

    V, lengths = 50, [5, 3, 7, 1]
    R = sum(lengths)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(R, V, generator=g, dtype=torch.float64) * 3
    tokens = np.random.default_rng(0).integers(0, V, R)
    p = torch.softmax(logits, dim=1)  # temperatures[0] = 1
    top, _ = p.sort(dim=1, descending=True)
    full_entropy = float(-(p * p.log()).sum(1).mean())
    for values_dtype, targets, tol in (("float16", "topk", 2e-3), ("uint8", "topk", 2e-3), ("float16", "sampled", None)):
        sampled = targets == "sampled"
        m = seq_manifest(V, lengths, k=6 if sampled else 4, chunk_rows=8, values_dtype=values_dtype, targets=targets, draws=6 if sampled else None)
        write_store(tmp_path / f"{values_dtype}-{targets}", m, logits.float(), tokens, lengths)
        store = open_store(tmp_path / f"{values_dtype}-{targets}")
        t = teacher_stats(store)
        store.close()
        assert t["rows"] == R and t["mean_entropy_nats"] <= full_entropy + 1e-6
        if tol is None:  # sampled: ids drawn at random, both figures are lower bounds
            assert 0 < t["mean_confidence"] <= float(top[:, 0].mean()) + 1e-6 and "lower bound" in t["confidence_is"]
            continue
        stored, tail = top[:, :4], 1 - top[:, :4].sum(1)
        bucket = float((-(stored * stored.log()).sum(1) - tail * tail.log()).mean())
        assert abs(t["mean_entropy_nats"] - bucket) < tol and abs(t["mean_confidence"] - float(top[:, 0].mean())) < tol
