"""End to end on tiny real data: stages, skipping, the student without the teacher, store refusal."""

import json
import shutil

import pytest
import zarr

from kd_pipeline.config import load_config
from kd_pipeline.errors import StoreError
from kd_pipeline.runner import run_pipeline
from tests.conftest import tiny_config, write_config


def test_end_to_end_outputs(tiny_run):
    cfg = load_config(tiny_run)
    out = cfg.out_dir
    m = json.loads((out / "metrics.json").read_text())["models"]
    for name in ("teacher", "student", "baseline"):
        r = m[name]
        assert 0.0 <= r["test"]["accuracy"] <= 1.0 and r["test"]["rows"] == 400
        assert r["parameters"] > 0 and r["bytes_on_disk"] > 0 and r["latency_ms_per_sample_cpu"] > 0
        assert 0.0 <= r["test"]["agreement_with_teacher"] <= 1.0
    assert m["teacher"]["test"]["agreement_with_teacher"] == 1.0
    assert m["teacher"]["test"]["accuracy"] > 0.2  # 200 steps of a real CNN on real data: well above chance (0.1)
    assert "report.png" in (out / "report.md").read_text()
    assert (out / "report.png").stat().st_size > 1000
    g = zarr.open_group(str(out / "cache"), mode="r")
    meta = g.attrs["kd_cache"]
    # the training splits, then the test split (evaluation only)
    assert meta["complete"] and meta["num_rows"] == 2000 and meta["dataset"]["splits"] == ["train", "transfer", "test"]
    assert meta["dataset"]["eval_split"] == "test" and meta["values_scheme"] == "relative"
    assert g["features/penultimate"].shape == (2000, 8 * 5)
    for ck in ("teacher", "student", "baseline"):
        assert (out / f"{ck}.safetensors").read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle


def test_rerun_skips_and_student_change_reruns_only_student_stages(tiny_run):
    cfg = load_config(tiny_run)
    assert run_pipeline(cfg) == []
    assert run_pipeline(load_config(tiny_run, ["distill.alpha=0.5"])) == ["train_student", "evaluate"]
    assert run_pipeline(load_config(tiny_run, ["distill.alpha=0.5", "student_train.lr=2e-3"])) == ["train_student", "train_baseline", "evaluate"]
    assert run_pipeline(load_config(tiny_run)) == ["train_student", "train_baseline", "evaluate"]  # back again
    assert run_pipeline(load_config(tiny_run), only=["cache_teacher"], force=True) == ["cache_teacher"]


RAISING = '''
def exploding_teacher(num_classes, channels=8):
    raise RuntimeError("the student stage must never build the teacher")
'''


CACHED_TYPES = {  # every distillation type that reads stores (views: tests/test_views.py)
    "response": ({}, "train_student", "student.safetensors"),
    "feature": ({"distill.feature": {"cached": "penultimate", "student_module": "body"}}, "train_student", "student.safetensors"),
    "relation": ({"distill.relation": {"cached": "penultimate", "student_module": "body"}}, "train_student", "student.safetensors"),
    "multi-teacher": ({"distill.teachers": [{"path": "{run}/cache", "weight": 0.6}, {"path": "{run}/cache2", "weight": 0.4}]},
                      "train_student", "student.safetensors"),
    "born-again": ({"distill.generations": 1}, "born_again", "generations/g1/student.safetensors"),
}


@pytest.mark.parametrize("mode", list(CACHED_TYPES))
def test_student_stage_trains_without_the_teacher(tiny_run, tmp_path, monkeypatch, mode):
    over, stage, out = CACHED_TYPES[mode]
    src = load_config(tiny_run)
    run = tmp_path / "run"
    shutil.copytree(src.out_dir, run)
    shutil.copytree(run / "cache", run / "cache2")  # a second store of the same data (multi-teacher)
    (run / "teacher.safetensors").unlink()
    (tmp_path / "no_teacher.py").write_text(RAISING)
    monkeypatch.syspath_prepend(str(tmp_path))
    over = json.loads(json.dumps(over).replace("{run}", str(run)))
    cfg_d = tiny_config(run, **{"teacher.factory": "no_teacher:exploding_teacher", "student_train.steps": 20, **over})
    cfg = load_config(write_config(tmp_path / "p.yaml", cfg_d))
    (run / "student.safetensors").unlink()
    assert run_pipeline(cfg, only=[stage]) == [stage]
    assert (run / out).is_file()


def test_feature_distillation_trains(tiny_run, tmp_path):
    src = load_config(tiny_run)
    shutil.copytree(src.cache_path, tmp_path / "cache")
    d = tiny_config(tmp_path / "run", **{"cache.path": str(tmp_path / "cache"), "distill.feature": {"cached": "penultimate", "student_module": "body", "beta": 0.5}})
    cfg = load_config(write_config(tmp_path / "p.yaml", d))
    run_pipeline(cfg, only=["train_student"])
    log = [json.loads(x) for x in (tmp_path / "run" / "logs" / "train_student.jsonl").read_text().splitlines()]
    assert "feature_mse" in log[0] and log[-1]["feature_mse"] < log[0]["feature_mse"]


@pytest.mark.parametrize(
    "sets,match",
    [
        (["data.kwargs.seed=8"], "store was made for other data"),
        (["data.num_classes=11"], "store has num_classes=10, data.num_classes is 11"),
        # cache.temperatures has 3.0, so loading passes (a full run would rebuild the store); the stage alone refuses
        (["distill.temperature=3.0", "cache.temperatures=[1.0, 3.0]"], r"distill.temperature: 3.0 is not one of the store's temperatures \[1.0, 4.0\]"),
    ],
)
def test_student_refuses_a_store_for_other_data(tiny_run, tmp_path, sets, match):
    src = load_config(tiny_run)
    d = tiny_config(tmp_path / "run", **{"cache.path": str(src.cache_path)})
    cfg = load_config(write_config(tmp_path / "p.yaml", d), sets)
    with pytest.raises(StoreError, match=match):
        run_pipeline(cfg, only=["train_student"])


def test_student_with_no_store_says_which_stage_to_run(tmp_path):
    cfg = load_config(write_config(tmp_path / "p.yaml", tiny_config(tmp_path / "run")))
    with pytest.raises(StoreError, match="run the cache_teacher stage first"):
        run_pipeline(cfg, only=["train_student"])
