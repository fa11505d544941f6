"""Every distillation type from pipeline.yaml (docs/distillation-types.md): each loss module against values worked
by hand on a tiny batch, each example through `kd run` (shrunk with --set), born-again generations and their
stores, the multi-teacher ensemble against the dense mixture (k = C), and the config's refusals.
(Views: tests/test_views.py; the student without a teacher in every cached mode: tests/test_pipeline.py.)"""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch import nn
from typer.testing import CliRunner

from kd_pipeline.checkpoint import file_sha256, load_model
from kd_pipeline.cli import app
from kd_pipeline.config import DistillConfig, load_config
from kd_pipeline.errors import ConfigError
from kd_pipeline.kinds import Classification
from kd_pipeline.models import Classifier, build_model
from kd_pipeline.objectives import CachedKD, MutualLearning, OnlineKD
from kd_pipeline.prepare import open_samples
from kd_pipeline.runner import run_pipeline
from kd_pipeline.store import open_store
from kd_pipeline.store.format import FeatureInfo
from kd_pipeline.targets import Targets, teacher_rows
from tests.conftest import tiny_config, write_config

SQ2 = math.sqrt(2.0)
KIND = Classification(2)


def _fixed(logits, body: nn.Module | None = None) -> Classifier:
    """A 2-class model whose output is `logits` whatever the input (a zero-weight head with that bias)."""
    head = nn.Linear(2 if body is not None else 1, 2)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor(logits, dtype=torch.float32))
    return Classifier(body if body is not None else nn.Flatten(), head)


# ------------------------------------------------------------------------------------------ losses by hand


def test_relation_objective_by_hand():
    # the student's body is the identity: its embedding of the batch is the input, a right isosceles triangle;
    # the cached teacher feature is a 3-4-5 triangle (tests/test_relation.py works the RKD terms out)
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    diffs = [(3 - 1.5 * SQ2) - 0.75, (3 - 1.5 * SQ2) - 1.0, (3 * SQ2 - 3) - 1.25]
    dist = sum(d * d / 2 for d in diffs) / 3
    angle = ((0.6 - 1 / SQ2) ** 2 / 2 + (0.8 - 1 / SQ2) ** 2 / 2) / 3
    # head output 0: q = (1/2, 1/2); alpha = 1 leaves CE = ln 2 of the response part
    cfg = DistillConfig(alpha=1.0, temperature=1.0, relation={"cached": "emb", "student_module": "body", "w_dist": 25.0, "w_angle": 50.0})
    module = CachedKD(_fixed([0.0, 0.0], nn.Identity()), KIND, cfg, {"emb": FeatureInfo(shape=[2], dtype="float32", module="body")})
    targets = Targets(torch.zeros(3, 2), torch.tensor([[0, 1]] * 3), torch.full((3, 1), math.log(2.0)), (1.0,), 2, {"emb": t})
    loss, parts = module({"x": s, "y": torch.tensor([0, 1, 0]), "targets": targets})
    assert float(parts["rkd_dist"]) == pytest.approx(dist, rel=1e-5) and float(parts["rkd_angle"]) == pytest.approx(angle, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(math.log(2.0) + 25 * dist + 50 * angle, rel=1e-5)
    loss.backward()
    assert module.student.head.bias.grad is not None


def test_online_objective_by_hand():
    # live teacher: logits (0, tau ln 3) -> p_T = (1/4, 3/4) at tau; student: q = (1/2, 1/2); label 0
    tau, alpha = 2.0, 0.3
    teacher = _fixed([0.0, tau * math.log(3.0)])
    cfg = DistillConfig(mode="online", alpha=alpha, temperature=tau)
    module = OnlineKD(_fixed([0.0, 0.0]), teacher, KIND, cfg, {}, {})
    loss, parts = module({"x": torch.zeros(1, 1), "y": torch.tensor([0])})
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert float(parts["kl"]) == pytest.approx(kl, rel=1e-6) and float(parts["ce"]) == pytest.approx(math.log(2.0), rel=1e-6)
    assert float(loss.detach()) == pytest.approx(alpha * math.log(2.0) + (1 - alpha) * tau * tau * kl, rel=1e-6)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters()) and module.student.head.bias.grad is not None
    assert not module.train().teacher.training  # the teacher stays in eval mode


def test_mutual_objective_by_hand():
    # a predicts (1/2, 1/2), b predicts (3/4, 1/4); label 0
    a, b = _fixed([0.0, 0.0]), _fixed([math.log(3.0), 0.0])
    loss, parts = MutualLearning(a, b, KIND)({"x": torch.zeros(1, 1), "y": torch.tensor([0])})
    kl_ba = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(p_b || p_a)
    kl_ab = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # KL(p_a || p_b)
    assert float(parts["kl_a"]) == pytest.approx(kl_ba) and float(parts["kl_b"]) == pytest.approx(kl_ab)
    assert float(loss.detach()) == pytest.approx(math.log(2.0) + kl_ba - math.log(0.75) + kl_ab, rel=1e-6)
    loss.backward()
    # each student gets the gradient of its own loss only: (p - y) + (p - p_peer)
    torch.testing.assert_close(a.head.bias.grad, torch.tensor([-0.75, 0.75]))
    torch.testing.assert_close(b.head.bias.grad, torch.tensor([0.0, 0.0]))


# --------------------------------------------------------------------------------------- examples, kd run

SMALL = ["data.kwargs.num_samples=2000", "data.kwargs.labelled=400", "teacher_train.steps=40", "student_train.steps=12",
         "student_train.batch_size=50", "teacher_train.batch_size=50", "evaluate.latency_runs=3", "cache.chunk_rows=256"]


def kd_run(yaml: str, out, *extra: str, stages=()):
    args = ["run", yaml, *[a for s in (f"out={out}", *SMALL, *extra) for a in ("--set", s)], *[a for s in stages for a in ("--stage", s)]]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    return json.loads((out / "metrics.json").read_text())["models"] if (out / "metrics.json").is_file() else None


@pytest.mark.parametrize("example,models", [
    ("relation", ["teacher", "student", "baseline"]),
    ("online", ["teacher", "student", "baseline"]),
    ("mutual", ["teacher", "student", "baseline", "student_peer"]),
])
def test_example_runs_end_to_end(tmp_path, example, models):
    got = kd_run(f"examples/{example}/pipeline.yaml", tmp_path / "run")
    assert list(got) == models and all(0.0 <= got[m]["test"]["accuracy"] <= 1.0 for m in models)
    log = (tmp_path / "run" / "logs" / "train_student.jsonl").read_text().splitlines()[0]
    want = {"relation": ("rkd_dist", "rkd_angle", "kl"), "online": ("kl", "ce"), "mutual": ("kl_a", "kl_b")}[example]
    assert all(k in json.loads(log) for k in want)


def test_born_again_example_keeps_every_generation(tmp_path):
    run = tmp_path / "run"
    got = kd_run("examples/born-again/pipeline.yaml", run)
    assert [m for m in got if m.startswith("born_again")] == ["born_again_g1", "born_again_g2"]
    cfg = load_config("examples/born-again/pipeline.yaml", [f"out={run}", *SMALL])
    for g, made_by in ((0, run / "baseline.safetensors"), (1, run / "generations" / "g1" / "student.safetensors")):
        m = open_store(run / "generations" / f"g{g}" / "cache").manifest
        assert m.teacher.factory == cfg.student.factory and m.teacher.checkpoint_sha256 == file_sha256(made_by)
    assert (run / "generations" / "g2" / "student.safetensors").is_file()
    # generation 1's store holds generation 1's outputs: its rows are that model's teacher rows
    store = open_store(run / "generations" / "g1" / "cache")
    g1 = load_model(build_model(cfg.student, 10), run / "generations" / "g1" / "student.safetensors", "g1").eval()
    samples = open_samples(cfg, store.manifest.dataset.splits)
    s = store.samples.block(0, 256)
    with torch.no_grad():
        want = teacher_rows(g1(samples.__getitems__((s["split"], s["sample_id"]))["x"]), store.manifest)
    blk = store.read_block(0)
    assert np.array_equal(want["ids"].numpy(), blk["topk_indices"])
    # float16 values: the stored lse absorbs their rounding (docs/store-format.md "Values"), within ~1e-4
    np.testing.assert_allclose(blk["lse"], want["lse"].numpy(), atol=5e-4)


def test_multi_teacher_example_mixes_two_teachers_into_one_store(tmp_path):
    b = tmp_path / "b"
    kd_run("examples/multi-teacher/teacher-b.yaml", b, stages=("prepare_data", "train_teacher", "cache_teacher"))
    run = tmp_path / "run"
    teachers = f"distill.teachers=[{{path: {run / 'cache'}, weight: 0.7}}, {{path: {b / 'cache'}, weight: 0.3}}]"
    got = kd_run("examples/multi-teacher/pipeline.yaml", run, teachers)
    assert "student" in got
    m = open_store(run / "ensemble").manifest
    assert m.teacher.factory == "ensemble" and [s["weight"] for s in m.sources] == [0.7, 0.3] and m.top_k == 8
    # the run summary names the store the student read: the ensemble, not the first teacher's
    from kd_pipeline.config import load_config
    from kd_pipeline.summary import summary_rows

    cfg = load_config(Path("examples/multi-teacher/pipeline.yaml"), [f"out={run}", *SMALL, teachers])
    assert dict(summary_rows(cfg, []))["store"].endswith(f"({run / 'ensemble'})")


def test_multi_teacher_with_full_k_is_the_dense_mixture(tiny_run, tmp_path):
    """k = num_classes for both teachers: the store the student reads holds 0.7 p_A + 0.3 p_B exactly."""
    full = {"cache.top_k": 10, "cache.values_dtype": "float32", "cache.features": {}}
    (tmp_path / "a-run").mkdir()  # the session run's teacher, cached again with k = C in a run folder of its own
    shutil.copy(load_config(tiny_run).out_dir / "teacher.safetensors", tmp_path / "a-run" / "teacher.safetensors")
    a = load_config(write_config(tmp_path / "a.yaml", tiny_config(tmp_path / "a-run", **full, **{"cache.path": str(tmp_path / "a")})))
    run_pipeline(a, only=["prepare_data", "cache_teacher"])
    b = load_config(write_config(tmp_path / "b.yaml", tiny_config(tmp_path / "b", seed=1, **full, **{"teacher.kwargs": {"channels": 16}, "cache.temperatures": [4.0]})))
    run_pipeline(b, only=["prepare_data", "train_teacher", "cache_teacher"])
    mt = tiny_config(tmp_path / "run", **{"distill.teachers": [{"path": str(tmp_path / "a"), "weight": 0.7}, {"path": str(b.cache_path), "weight": 0.3}]})
    cfg = load_config(write_config(tmp_path / "mt.yaml", mt))
    assert run_pipeline(cfg, only=["prepare_data", "train_student"]) == ["prepare_data", "train_student"]

    def dense(path, tau=4.0):
        g = zarr.open_group(str(path), mode="r")
        col = g.attrs["kd_cache"]["temperatures"].index(tau)
        p = np.exp(g["topk_logits"][:].astype(np.float64) / tau - g["lse"][:, col : col + 1].astype(np.float64))
        out = np.zeros_like(p)
        np.put_along_axis(out, g["topk_indices"][:].astype(np.int64), p, axis=1)
        return out

    want = 0.7 * dense(tmp_path / "a") + 0.3 * dense(b.cache_path)
    np.testing.assert_allclose(dense(tmp_path / "run" / "ensemble"), want, rtol=1e-5, atol=1e-7)
    assert (tmp_path / "run" / "student.safetensors").is_file()


# ------------------------------------------------------------------------------------------- config refusals


@pytest.mark.parametrize("over,match", [
    ({"distill.teachers": [{"path": "x"}]}, "distill.teachers: needs two or more stores"),
    ({"distill.teachers": [{"path": "x"}, {"path": "y"}], "distill.mode": "online"}, "distill.teachers: mixes stores: mode cached only"),
    ({"distill.teachers": [{"path": "x"}, {"path": "y"}], "distill.relation": {"cached": "penultimate", "student_module": "body"}}, "an ensemble store has no features"),
    ({"distill.generations": 2, "distill.mode": "mutual"}, "distill.generations: born-again generations distil from stores"),
    ({"distill.mode": "mutual", "distill.feature": {"cached": "penultimate", "student_module": "body"}}, "distill.mode: mutual learning has no teacher features"),
    ({"distill.relation": {"cached": "nope", "student_module": "body"}}, "distill.relation.cached: 'nope' is not one of cache.features"),
    ({"distill.mode": "online", "cache.views": {"count": 2}}, "distill.mode: cache.views replays stored views: mode cached only"),
    ({"distill.mode": "offline"}, "distill.mode: Input should be 'cached', 'online' or 'mutual'"),
    ({"cache.views": {"count": 2, "transform": {"factory": "kd_pipeline.views:crop_flip", "kwargs": {"size": 3}}}}, "cache.views.transform"),
])
def test_config_refuses_types_that_cannot_work_together(tmp_path, over, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write_config(tmp_path / "p.yaml", tiny_config(tmp_path / "run", **over)))
