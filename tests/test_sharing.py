"""Sharing a store across teams (issue 7): a consumer pipeline trains and evaluates from a store it received,
with no teacher anywhere, and never damages it; a pipeline with a teacher never writes a store its own run
folder did not create."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import stat
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kd_pipeline.cli import app
from kd_pipeline.config import load_config
import stages.cache_teacher as cache_teacher
from kd_pipeline.distributed import Dist
from kd_pipeline.errors import ConfigError, StoreError
from kd_pipeline.runner import run_pipeline
from tests.conftest import tiny_config, write_config
from tests.test_refusals import one_error_line

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def tree(folder: Path) -> dict[str, str]:
    """Every file under folder -> sha256 of its bytes (a store is unchanged iff this is)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def readme_consumer_yaml() -> dict:
    """The complete consumer file of README's "Train from a store you received", as written there."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Train from a store you received"):]
    return yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))


def consumer_config(run: Path, store: Path, **over) -> dict:
    """The tiny pipeline as a consumer of `store`: no teacher, no teacher_train, no cache key but path."""
    d = tiny_config(run, **over)
    for k in ("teacher", "teacher_train"):
        d.pop(k)
    d["data"].pop("num_classes")
    d["cache"] = {"path": str(store)}
    return d


def _no_teacher_code(monkeypatch):
    """The teacher's factory raises: nothing in a consumer run may build a teacher."""
    import kd_pipeline.models as models

    def exploding(*a, **k):
        raise AssertionError("a consumer pipeline built a teacher")

    monkeypatch.setattr(models, "conv1d_net", exploding)


@pytest.fixture(scope="module")
def received(tiny_run, tmp_path_factory) -> Path:
    """A copy of the session run's store, alone in a folder (no run folder, no teacher beside it)."""
    dst = tmp_path_factory.mktemp("received") / "store"
    shutil.copytree(load_config(tiny_run).cache_path, dst)
    for p in dst.glob("_lock*"):
        p.unlink()  # lock files of the producing run are not part of what one hands over
    return dst


def test_readme_consumer_trains_and_evaluates_from_a_copy_of_the_default_store(tmp_path, monkeypatch):
    """README's file, as written, on a copy of the default pipeline's store whose producer is then deleted."""
    monkeypatch.chdir(tmp_path)
    # the default pipeline (pipeline.yaml), with a shorter teacher training: its teacher pass makes the store
    producer = load_config(ROOT / "pipeline.yaml", ["out=producer", "teacher_train.steps=100"])
    run_pipeline(producer, only=["prepare_data", "train_teacher", "cache_teacher"])
    shutil.copytree("producer/cache", "received-store", ignore=shutil.ignore_patterns("_lock*"))
    shutil.rmtree("producer")  # no teacher checkpoint anywhere
    _no_teacher_code(monkeypatch)
    before = tree(Path("received-store"))

    write_config(Path("received.yaml"), readme_consumer_yaml())
    r = runner.invoke(app, ["run", "received.yaml", "--set", "student_train.steps=60", "--set", "evaluate.latency_runs=5"])
    assert r.exit_code == 0, r.output
    assert tree(Path("received-store")) == before  # byte-identical, and not one file added (no lock either)

    out = Path("runs/received")
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["models"]) == {"student", "baseline"}  # no teacher model was loaded
    fs = m["from_store"]
    assert fs["split"] == "test" and fs["rows"] == fs["labelled_rows"] == 6000 and fs["temperatures"] == [1.0, 4.0]
    assert 0.3 < fs["teacher"]["accuracy"] <= 1.0  # 100 steps of the CNN: well above chance (0.1)
    for name in ("student", "baseline"):
        v = fs["models"][name]
        assert 0.0 <= v["agreement_with_teacher"] <= 1.0 and set(v["kl_to_teacher"]) == {"1", "4"}
        assert v["kl_to_teacher"]["1"] > 0.0 and v["accuracy"] == m["models"][name]["test"]["accuracy"]
        assert m["models"][name]["test"]["agreement_with_teacher"] == v["agreement_with_teacher"]
    assert "Against the teacher's stored targets" in (out / "report.md").read_text()

    # the same file with a teacher section added: refused (one line, exit 2), store untouched
    d = readme_consumer_yaml()
    d["teacher"] = {"factory": "kd_pipeline.models:conv1d_net", "kwargs": {"channels": 32}}
    msg = one_error_line(runner.invoke(app, ["run", str(write_config(Path("with-teacher.yaml"), d))]))
    assert msg == "with-teacher.yaml: data.num_classes: required key is missing"
    # ... and with everything a teacher pass needs: refused before any teacher is trained
    d.update(teacher_train={"steps": 5, "batch_size": 100, "lr": 1e-2})
    d["data"]["num_classes"] = 10
    d["cache"]["top_k"] = 3
    d["out"] = "runs/mine"
    monkeypatch.undo()  # the teacher's code is back: this pipeline may build one (and must not get to)
    monkeypatch.chdir(tmp_path)
    msg = one_error_line(runner.invoke(app, ["run", str(write_config(Path("with-teacher.yaml"), d))]))
    assert msg.startswith("received-store: holds a complete store that this run folder (runs/mine) did not create — store: "
                          "teacher kd_pipeline.models:conv1d_net {'channels': 32} (checkpoint sha256 "), msg
    assert msg.endswith("this pipeline: teacher kd_pipeline.models:conv1d_net {'channels': 32}, cache.temperatures [1.0, 4.0] vs [1.0]; "
                        "cache.features {'penultimate': 'body'} vs {} (store vs pipeline). kd run never resumes, replaces or "
                        "rewrites a store it did not create: to train from it, remove teacher, teacher_train and every cache key but "
                        "path (README: Train from a store you received); to cache your own teacher, set cache.path to a new folder"), msg
    assert not Path("runs/mine/teacher.safetensors").exists()  # refused before training anything
    assert tree(Path("received-store")) == before


def test_producer_refuses_a_store_copied_from_another_run(received, tmp_path):
    """A store from another run, at this run's default cache path: refused, naming both teachers and the
    difference in configuration; nothing written or deleted, no teacher trained."""
    run = tmp_path / "run"
    shutil.copytree(received, run / "cache")
    before = tree(run / "cache")
    p = write_config(tmp_path / "p.yaml", tiny_config(run, **{"cache.top_k": 5}))
    msg = one_error_line(runner.invoke(app, ["run", str(p)]))
    assert msg.startswith(f"{run / 'cache'}: holds a complete store that this run folder ({run}) did not create — store: teacher "
                          "kd_pipeline.models:conv1d_net {'channels': 8} (checkpoint sha256 "), msg
    assert "…); this pipeline: teacher kd_pipeline.models:conv1d_net {'channels': 8}, cache.top_k 3 vs 5 (store vs pipeline). kd run never" in msg
    assert tree(run / "cache") == before and not (run / "teacher.safetensors").exists()


def test_cache_stage_refuses_a_store_of_another_run_even_with_the_same_teacher(received, tiny_run, tmp_path):
    """The same teacher checkpoint and configuration, but another run folder: the cache stage itself refuses
    (under the lock too), and the message says the teachers are the same and nothing else differs."""
    run = tmp_path / "run"
    src = load_config(tiny_run).out_dir
    (run / ".kd").mkdir(parents=True)
    shutil.copy(src / "teacher.safetensors", run / "teacher.safetensors")  # the very teacher that made the store
    shutil.copytree(received, run / "cache")
    before = tree(run / "cache")
    cfg = load_config(write_config(tmp_path / "p.yaml", tiny_config(run)))
    with pytest.raises(StoreError) as e:
        run_pipeline(cfg, only=["cache_teacher"])
    assert "this pipeline: teacher kd_pipeline.models:conv1d_net {'channels': 8}. kd run never" in str(e.value)
    with pytest.raises(StoreError) as e:  # the stage run directly (no preflight): CacheWriter.open refuses
        cache_teacher.run(cfg, Dist())
    assert "this pipeline: the same teacher, teacher kd_pipeline.models:conv1d_net {'channels': 8} (checkpoint sha256 " in str(e.value)
    assert tree(run / "cache") == before


def test_producer_refuses_a_read_only_copy_and_a_consumer_trains_from_it(received, tmp_path):
    ro = tmp_path / "ro-store"
    shutil.copytree(received, ro)
    before = tree(ro)
    for p in [ro, *ro.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        p = write_config(tmp_path / "p.yaml", tiny_config(tmp_path / "run", **{"cache.path": str(ro)}))
        msg = one_error_line(runner.invoke(app, ["run", str(p)]))
        assert msg.startswith(f"{ro}: holds a complete store that this run folder ({tmp_path / 'run'}) did not create"), msg
        c = write_config(tmp_path / "c.yaml", consumer_config(tmp_path / "consumer", ro, **{"student_train.steps": 10}))
        r = runner.invoke(app, ["run", str(c)])
        assert r.exit_code == 0, r.output
        assert tree(ro) == before
    finally:
        for p in [ro, *ro.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_a_copied_run_folder_owns_its_copied_store(tiny_run, tmp_path):
    """Copying a whole run folder (teacher, stamps, ownership record, store) copies the right to rebuild."""
    run = tmp_path / "run"
    shutil.copytree(load_config(tiny_run).out_dir, run)
    cfg = load_config(write_config(tmp_path / "p.yaml", tiny_config(run, **{"cache.top_k": 4})))
    assert run_pipeline(cfg, only=["cache_teacher"]) == ["cache_teacher"]
    assert json.loads((run / "cache" / "zarr.json").read_text())["attributes"]["kd_cache"]["top_k"] == 4


def test_consumer_runs_only_student_stages(received, tmp_path):
    cfg = load_config(write_config(tmp_path / "c.yaml", consumer_config(tmp_path / "run", received)))
    assert cfg.kind == "classification" and cfg.data.num_classes == 10 and cfg.cache.top_k == 3
    assert cfg.cache.temperatures == [1.0, 4.0] and cfg.cache.features == {"penultimate": "body"}
    with pytest.raises(ConfigError, match=r"^--stage cache_teacher: a pipeline without a teacher \(it trains from cache.path\) has only "
                                          r"the stages prepare_data, train_student, train_baseline, evaluate$"):
        run_pipeline(cfg, only=["cache_teacher"])


@pytest.mark.parametrize("key,value,expect", [
    ("cache.top_k", 3, "c.yaml: cache.top_k: the store's manifest declares it (3 in {store}); a pipeline without a teacher reads it from there: remove it"),
    ("cache.temperatures", [1.0, 4.0], "c.yaml: cache.temperatures: the store's manifest declares it ([1.0, 4.0] in {store}); a pipeline without a teacher reads it from there: remove it"),
    ("data.num_classes", 10, "c.yaml: data.num_classes: the store's manifest declares it (10 in {store}); a pipeline without a teacher reads it from there: remove it"),
    ("kind", "classification", "c.yaml: kind: the store's manifest declares it ('classification' in {store}); a pipeline without a teacher reads it from there: remove it"),
    ("cache.features", {"penultimate": "body"}, "c.yaml: cache.features: the store's manifest declares it ({{'penultimate': 'body'}} in {store}); a pipeline without a teacher reads it from there: remove it"),
    ("teacher_train", {"steps": 5, "batch_size": 5, "lr": 0.1}, "c.yaml: teacher_train: used by the teacher pass only, and a pipeline without a teacher has none; remove it (or add a teacher section to cache your own teacher into a new cache.path)"),
    ("cache.device", "cpu", "c.yaml: cache.device: used by the teacher pass only, and a pipeline without a teacher has none; remove it (or add a teacher section to cache your own teacher into a new cache.path)"),
])
def test_consumer_refuses_keys_the_manifest_declares(received, tmp_path, key, value, expect):
    d = consumer_config(tmp_path / "run", received)
    node = d
    for part in key.split(".")[:-1]:
        node = node[part]
    node[key.split(".")[-1]] = value
    p = write_config(tmp_path / "c.yaml", d)
    msg = one_error_line(runner.invoke(app, ["run", str(p)])).replace(str(p), "c.yaml")
    assert msg == expect.format(store=received)


def test_consumer_needs_a_store(tmp_path):
    d = consumer_config(tmp_path / "run", tmp_path / "nothing")
    p = write_config(tmp_path / "c.yaml", d)
    assert one_error_line(runner.invoke(app, ["run", str(p)])) == (
        f"{p}: cache.path: {tmp_path / 'nothing'} holds no store (no zarr.json); a pipeline without a teacher trains from a store "
        "a teacher pass made: point cache.path at that folder (or URL)")
    d["cache"] = {}
    assert one_error_line(runner.invoke(app, ["run", str(write_config(p, d))])) == f"{p}: cache.path: required for a pipeline without a teacher (the store to train from)"


def test_consumer_refuses_a_store_made_for_other_data(received, tmp_path):
    d = consumer_config(tmp_path / "run", received, **{"data.kwargs.seed": 8})
    r = runner.invoke(app, ["run", str(write_config(tmp_path / "c.yaml", d))])
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 2 and lines[0] == "prepare_data" and len(lines) == 2, r.output  # refused by the data check
    msg = lines[1].removeprefix("error: ")
    assert msg.startswith(f"{received}: store was made for other data (dataset fingerprint sha256:")
    assert msg.endswith("this pipeline has no teacher: use a store made for this data")


def test_store_metrics_equal_the_live_teachers(tiny_run):
    """With the teacher at hand, what evaluate reports from the store alone equals what the live teacher gives."""
    m = json.loads((load_config(tiny_run).out_dir / "metrics.json").read_text())
    fs, live = m["from_store"], m["models"]
    assert fs["rows"] == live["teacher"]["test"]["rows"] == 400
    assert fs["teacher"]["accuracy"] == live["teacher"]["test"]["accuracy"]
    for name in ("student", "baseline"):
        assert fs["models"][name]["agreement_with_teacher"] == live[name]["test"]["agreement_with_teacher"]
        assert fs["models"][name]["accuracy"] == live[name]["test"]["accuracy"]


def test_consumer_advice_never_asks_for_a_teacher_pass(received, tmp_path):
    """What a consumer is told to do is something a consumer can do: choose among the store's temperatures,
    export a student (its run folder has no teacher)."""
    d = consumer_config(tmp_path / "run", received, **{"distill.temperature": 2.0})
    msg = one_error_line(runner.invoke(app, ["run", str(write_config(tmp_path / "c.yaml", d))]))
    assert msg.endswith("2.0 is not one of the temperatures of the store at " + f"{received} [1.0, 4.0]; choose one of them: "
                        "a received store's temperatures are fixed (its producer can make one with this τ)"), msg
    assert "cache.temperatures" not in msg
    d = consumer_config(tmp_path / "run", received, **{"student_train.steps": 3, "distill.temperature": 4.0})
    p = write_config(tmp_path / "c.yaml", d)
    assert runner.invoke(app, ["run", str(p), "--stage", "prepare_data", "--stage", "train_student"]).exit_code == 0
    msg = one_error_line(runner.invoke(app, ["export", str(tmp_path / "run"), "--model", "teacher"]))
    assert msg == (f"{tmp_path / 'run'}: no teacher in this run folder: its pipeline has no teacher section (it trained from a "
                   "received store); export the student or the baseline")
