"""`kd merge` on real stores: two teachers (a 1-D CNN and an MLP, other seeds) trained on the tiny MNIST-1D
pipeline, each cached with k = C and with k < C (other temperatures, dtypes and chunking). The merged store
is exact against the live teachers' dense mixture when k = C, passes `kd verify`, feeds the student's loss
path unchanged, and the CLI refuses what cannot be mixed with exit 2 and one line."""

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from kd_pipeline.checkpoint import load_model
from kd_pipeline.cli import app
from kd_pipeline.config import load_config
from kd_pipeline.distill import check_store_for
from kd_pipeline.errors import StoreError
from kd_pipeline.losses import dense_kl, kd_loss
from kd_pipeline.merge import merge_stores
from kd_pipeline.mixture import as_relative, mixture_topk, teacher_probs
from kd_pipeline.models import build_model
from kd_pipeline.runner import run_pipeline
from kd_pipeline.store import open_store
from kd_pipeline.prepare import load_summary, open_samples
from kd_pipeline.store.values import decode_values, encode_targets, to_host
from kd_pipeline.stream import student_batches
from tests.conftest import inputs_in_row_order, tiny_config, write_config

runner = CliRunner()
TEACHERS = {
    "a": {"seed": 0, "teacher.kwargs": {"channels": 8}},
    "b": {"seed": 1, "teacher.factory": "kd_pipeline.models:mlp", "teacher.kwargs": {"in_features": 40, "hidden": [32]}},
}
CACHES = {  # name -> (teacher, cache section)
    "a_full": ("a", {"top_k": 10, "temperatures": [1.0, 4.0], "values_dtype": "float32", "chunk_rows": 256, "features": {}}),
    "b_full": ("b", {"top_k": 10, "temperatures": [2.0, 4.0], "values_dtype": "float32", "chunk_rows": 256, "features": {}}),
    "a_top3": ("a", {"top_k": 3, "temperatures": [2.0], "chunk_rows": 256, "features": {"penultimate": "body"}}),
    "b_top5": ("b", {"top_k": 5, "temperatures": [2.0, 4.0], "chunk_rows": 100, "features": {}}),
    # teacher a over other data (another MNIST-1D seed): same shapes, another fingerprint
    "a_other_data": ("a", {"top_k": 10, "temperatures": [4.0], "chunk_rows": 256, "features": {}}),
}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """name -> store path; plus "cfg_a"/"cfg_b": the teachers' configs (to rebuild them for the dense check)."""
    d = tmp_path_factory.mktemp("merge")
    out = {}
    for t, over in TEACHERS.items():
        cfg = tiny_config(d / t, **over)
        out[f"cfg_{t}"] = load_config(write_config(d / f"{t}.yaml", cfg))
        run_pipeline(out[f"cfg_{t}"], ["train_teacher"])
        for name, (teacher, cache) in CACHES.items():
            if teacher != t:
                continue
            c = tiny_config(d / t, **over, cache={**cache, "path": str(d / name)})
            if name == "a_other_data":
                c["data"]["kwargs"]["seed"] = 8
            run_pipeline(load_config(write_config(d / f"{name}.yaml", c)), ["cache_teacher"])
            out[name] = d / name
    return out


def _teacher(cfg):
    return load_model(build_model(cfg.teacher, cfg.data.num_classes), cfg.out_dir / "teacher.safetensors", "teacher").eval()


def _probs(store_path):
    g = zarr.open_group(str(store_path), mode="r")
    v, lse = g["topk_logits"][:].astype(np.float64), g["lse"][:].astype(np.float64)
    tau = g.attrs["kd_cache"]["temperatures"][0]
    return np.exp(v / tau - lse), g["topk_indices"][:].astype(np.int64)


def test_full_k_merge_equals_the_teachers_dense_mixture(stores, tmp_path):
    m = merge_stores([stores["a_full"], stores["b_full"]], tmp_path / "m", [0.7, 0.3])
    assert m.complete and m.temperatures == [4.0] and m.top_k == 10 and m.values_scheme == "relative"
    assert [s["weight"] for s in m.sources] == [0.7, 0.3] and m.features == {}
    assert m.sources[1]["manifest"] == open_store(stores["b_full"]).manifest.model_dump(mode="json")
    # the live teachers over the store's rows, softmax at tau = 4, mixed 0.7 / 0.3
    cfg_a, cfg_b = stores["cfg_a"], stores["cfg_b"]
    store = open_store(tmp_path / "m")
    x = inputs_in_row_order(cfg_a, store)
    samples = open_samples(cfg_a, m.dataset.splits)
    with torch.no_grad():
        dense = (0.7 * torch.softmax(_teacher(cfg_a)(x) / 4.0, 1) + 0.3 * torch.softmax(_teacher(cfg_b)(x) / 4.0, 1)).double().numpy()
    p, ids = _probs(tmp_path / "m")
    assert np.allclose(np.take_along_axis(dense, ids, axis=1), p, rtol=1e-5, atol=1e-7)
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-6)

    # the student's path, unchanged: store check, block stream, kd_loss at the declared tau
    check_store_for(store, cfg_a, load_summary(cfg_a))
    low = cfg_a.model_copy(update={"distill": cfg_a.distill.model_copy(update={"temperature": 1.0})})
    with pytest.raises(StoreError, match=r"distill.temperature: 1.0 is not one of the store's temperatures \[4.0\]"):
        check_store_for(store, low, load_summary(cfg_a))  # the mixture exists at tau = 4 only
    batch = next(student_batches(store, samples, 128, 4, seed=0))
    student = build_model(stores["cfg_a"].student, 10)
    with torch.no_grad():
        s = student(batch["x"])
        loss, parts = kd_loss(s, batch["y"], batch["targets"], 4.0, alpha=0.0)
        parts = {k: float(v) for k, v in parts.items()}
        t_logits = (0.7 * torch.softmax(_teacher(cfg_a)(batch["x"]) / 4.0, 1) + 0.3 * torch.softmax(_teacher(cfg_b)(batch["x"]) / 4.0, 1)).log() * 4.0
    # tau * log(mixture) is a logit vector whose softmax at tau is the mixture: the dense KL of the seed formula
    assert parts["kl"] == pytest.approx(float(dense_kl(s, t_logits, 4.0).mean()), rel=1e-4)
    assert float(loss) == pytest.approx(16.0 * parts["kl"], rel=1e-6)
    store.close()


def test_cli_merge_of_topk_stores_verifies_and_matches_the_mixture(stores, tmp_path):
    out = tmp_path / "m"
    r = runner.invoke(app, ["merge", str(stores["a_top3"]), str(stores["b_top5"]), "--out", str(out), "--weights", "2,1"])
    assert r.exit_code == 0, r.output
    assert r.output.strip() == f"{out}: mixture of 2 stores (weights 0.6667, 0.3333) at temperature 2, top_k 8, 2,000 rows"
    r = runner.invoke(app, ["verify", str(out)])
    assert r.exit_code == 0 and f"{out}: OK" in r.output
    r = runner.invoke(app, ["inspect", str(out)])
    assert r.exit_code == 0 and "teacher ensemble" in r.output, r.output
    assert "weight 0.6667: kd_pipeline.models:conv1d_net" in r.output and "weight 0.3333: kd_pipeline.models:mlp" in r.output
    m = open_store(out).manifest
    assert (m.top_k, m.temperatures, m.chunk_rows, m.values_dtype, m.features) == (8, [2.0], 256, "float16", {})
    # the same arrays from the sources read whole (b_top5 is chunked by 100 rows, the output by 256)
    srcs = [open_store(stores[n]) for n in ("a_top3", "b_top5")]
    probs, ids = [], []
    for s in srcs:
        a = {n: s.arrays[n][:] for n in ("topk_logits", "topk_indices", "lse")}
        probs.append(teacher_probs(decode_values(a, "raw"), a["lse"][:, s.manifest.temperatures.index(2.0)], 2.0))
        ids.append(a["topk_indices"])
    p, i = mixture_topk(probs, ids, [2 / 3, 1 / 3], 10, 8)
    rel, lse = as_relative(p, 2.0)
    t = {"values": torch.from_numpy(rel), "ids": torch.from_numpy(i.astype(np.int64)), "lse": torch.from_numpy(lse)}
    want = to_host(encode_targets(t, m), m)
    g = zarr.open_group(str(out), mode="r")
    assert np.array_equal(g["topk_indices"][:], i.astype(np.int16))
    assert np.array_equal(g["topk_logits"][:], want["topk_logits"]) and np.array_equal(g["lse"][:], want["lse"])
    got_p, _ = _probs(out)
    # float16 keeps a relative value v to half a step (<= |v| / 2^11), so p = exp(v / tau - lse) to
    # |v| / (2^11 tau) relative, and the lse that restores the row's mass moves every p by at most the
    # row's largest such error; zero-mass filler ids (every source's tail 0 in that row) stay 0
    rel, _ = as_relative(p, 2.0)
    nz = p > 0
    bound = (np.abs(rel) + np.abs(np.where(nz, rel, 0)).max(axis=1, keepdims=True)) / 2**11 / 2.0 + 2e-6
    assert (got_p[~nz] == 0).all()
    assert (np.abs(got_p[nz] / p[nz] - 1) <= bound[nz]).all()
    assert np.abs(got_p - p).max() < 1e-3  # the stored mass is exact:
    assert np.allclose(got_p.sum(axis=1), p.sum(axis=1), rtol=0, atol=1e-6)
    assert (p.sum(axis=1) < 1 - 1e-3).any()  # k = 8 < 10 keeps a real tail in some rows


def _one_line_error(r, *fragments):
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.output
    for f in fragments:
        assert f in lines[0], lines[0]


def test_cli_refusals(stores, tmp_path):
    a, b, out = str(stores["a_full"]), str(stores["b_full"]), str(tmp_path / "m")
    r = runner.invoke(app, ["merge", a, str(stores["a_other_data"]), "--out", out])
    _one_line_error(r, str(stores["a_other_data"]), "dataset fingerprint", f"differs from {a}'s")
    r = runner.invoke(app, ["merge", a, b, "--out", out, "--temperature", "1"])
    _one_line_error(r, f"{b}: does not declare temperature 1.0 (it has [2.0, 4.0])")
    r = runner.invoke(app, ["merge", str(stores["a_top3"]), a, "--out", out])
    _one_line_error(r, "no temperature is declared by every store", "[2.0]", "[1.0, 4.0]")
    _one_line_error(runner.invoke(app, ["merge", a, b, "--out", out, "--weights", "1"]), "--weights: 1 weights for 2 stores")
    _one_line_error(runner.invoke(app, ["merge", a, b, "--out", out, "--weights", "1,x"]), "--weights: '1,x' is not a comma-separated list")
    _one_line_error(runner.invoke(app, ["merge", a, b, "--out", out, "--weights", "1,0"]), "--weights: each must be a finite number > 0")
    _one_line_error(runner.invoke(app, ["merge", a, b, "--out", out, "--top-k", "11"]), "--top-k: must be between 1 and num_classes (10), got 11")
    _one_line_error(runner.invoke(app, ["merge", a, "--out", out]), "needs at least two stores")
    _one_line_error(runner.invoke(app, ["merge", a, b, "--out", b]), f"--out {b}: is one of the stores to merge")
    _one_line_error(runner.invoke(app, ["merge", a, str(tmp_path), "--out", out]), f"{tmp_path}: no store here")
    assert not (tmp_path / "m").exists()  # nothing written by a refused merge


def test_store_error_types(stores, tmp_path):
    with pytest.raises(StoreError, match="does not declare temperature 3.0"):
        merge_stores([stores["a_full"], stores["b_full"]], tmp_path / "m", temperature=3.0)


def test_sequence_stores_merge_when_their_tokens_match(tmp_path):
    from kd_pipeline.store.verify import verify_store
    from tests.test_sequence_store import seq_manifest, write_store

    V, lengths = 50, [6, 9, 2, 11, 4, 8]  # 40 token rows
    g = torch.Generator().manual_seed(0)
    tokens = np.random.default_rng(0).integers(0, V, 40)
    logits = [torch.randn(40, V, generator=g) * s for s in (3.0, 2.0, 3.0)]
    write_store(tmp_path / "s1", seq_manifest(V, lengths, k=4), logits[0], tokens, lengths)
    write_store(tmp_path / "s2", seq_manifest(V, lengths, k=6, values_dtype="uint8", chunk_rows=16), logits[1], tokens, lengths)
    m = merge_stores([tmp_path / "s1", tmp_path / "s2"], tmp_path / "m", temperature=2.0)
    assert (m.kind, m.top_k, m.temperatures, m.values_scheme) == ("sequence", 10, [2.0], "relative")
    r = verify_store(tmp_path / "m")
    assert not r.problems, r.problems
    merged = zarr.open_group(str(tmp_path / "m"), mode="r")
    assert np.array_equal(merged["tokens"][:], tokens)
    probs, ids = [], []
    for name in ("s1", "s2"):
        s = open_store(tmp_path / name)
        a = {n: arr[:] for n, arr in s.arrays.items()}
        probs.append(teacher_probs(decode_values(a, s.manifest.values_scheme), a["lse"][:, 1], 2.0))
        ids.append(a["topk_indices"])
    p, i = mixture_topk(probs, ids, [0.5, 0.5], V, 10)
    assert np.array_equal(merged["topk_indices"][:], i) and np.allclose(_probs(tmp_path / "m")[0], p, rtol=1e-2, atol=1e-6)

    other = tokens.copy()
    other[17] = (other[17] + 1) % V
    write_store(tmp_path / "s3", seq_manifest(V, lengths, k=4), logits[2], other, lengths)
    with pytest.raises(StoreError, match=r"s3: tokens row 17 differs from .*s1's"):
        merge_stores([tmp_path / "s1", tmp_path / "s3"], tmp_path / "m2", temperature=2.0)
    write_store(tmp_path / "s4", seq_manifest(V, lengths, k=8, targets="sampled", draws=8), logits[2], tokens, lengths)
    with pytest.raises(StoreError, match=r"s4: holds sampled targets"):
        merge_stores([tmp_path / "s1", tmp_path / "s4"], tmp_path / "m3")


def test_rerun_rewrites_only_missing_blocks(stores, tmp_path):
    args = ([stores["a_top3"], stores["b_top5"]], tmp_path / "m")
    merge_stores(*args)
    before = {n: a[:] for n, a in open_store(tmp_path / "m").arrays.items()}
    marker = tmp_path / "m" / "_markers" / "block-00000003.json"
    marker.unlink()  # as if the merge had been killed before block 3 was marked
    kept = (tmp_path / "m" / "_markers" / "block-00000001.json").stat().st_mtime_ns
    merge_stores(*args)
    assert marker.is_file() and (tmp_path / "m" / "_markers" / "block-00000001.json").stat().st_mtime_ns == kept
    after = open_store(tmp_path / "m")
    assert all(np.array_equal(after.arrays[n][:], a) for n, a in before.items())
