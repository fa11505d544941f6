"""Config: every YAML in the repo validates; each mistake gives one line naming file/--set and key path."""

from pathlib import Path

import pytest
import yaml

from kd_pipeline.config import PipelineConfig, load_config
from kd_pipeline.errors import ConfigError
from tests.conftest import tiny_config, write_config

ROOT = Path(__file__).resolve().parents[1]


def pipeline_yamls():
    skip = {".venv", "runs", ".git", "node_modules"}
    return sorted(p for p in ROOT.rglob("*.yaml") if not skip & set(p.parts) and _is_pipeline(p))


def _is_pipeline(p: Path) -> bool:
    try:
        d = yaml.safe_load(p.read_text())
    except yaml.YAMLError:
        return True  # a broken YAML must fail the test below
    return isinstance(d, dict) and "teacher" in d and "out" in d


@pytest.mark.parametrize("path", pipeline_yamls(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_pipeline_yaml_in_the_repo_validates(path):
    assert isinstance(load_config(path), PipelineConfig)


def test_repo_has_the_default_pipeline():
    assert (ROOT / "pipeline.yaml") in pipeline_yamls()


def _err(tmp_path, cfg, sets=()):
    p = write_config(tmp_path / "pipeline.yaml", cfg)
    with pytest.raises(ConfigError) as e:
        load_config(p, list(sets))
    msg = str(e.value)
    assert "\n" not in msg
    return msg.replace(str(p), "pipeline.yaml")


CASES = [
    ({"cache.top_k": 0}, (), "pipeline.yaml: cache.top_k: must be between 1 and num_classes (10), got 0"),
    ({"cache.top_k": 11}, (), "pipeline.yaml: cache.top_k: must be between 1 and num_classes (10), got 11"),
    ({"cache.topk": 3}, (), "pipeline.yaml: cache.topk: unknown key"),
    ({"student_train.steps": "many"}, (), "pipeline.yaml: student_train.steps: Input should be a valid integer"),
    ({"distill.alpha": 1.5}, (), "pipeline.yaml: distill.alpha: Input should be less than or equal to 1"),
    ({"cache.temperatures": [1.0, -2.0]}, (), "pipeline.yaml: cache.temperatures: temperatures must be > 0"),
    ({"teacher.factory": "kd_pipeline.nosuch:net"}, (), "pipeline.yaml: teacher.factory: cannot import module 'kd_pipeline.nosuch'"),
    ({"teacher.factory": "kd_pipeline.models:nosuch"}, (), "pipeline.yaml: teacher.factory: module 'kd_pipeline.models' has no attribute 'nosuch'"),
    ({"teacher.kwargs": {"chanels": 8}}, (), "pipeline.yaml: teacher.kwargs: got an unexpected keyword argument 'chanels'"),
    ({"student.kwargs": {"num_classes": 10}}, (), "pipeline.yaml: student.kwargs.num_classes: set by the pipeline"),
    ({"distill.feature": {"cached": "nope", "student_module": "body"}}, (), "pipeline.yaml: distill.feature.cached: 'nope' is not one of cache.features"),
    ({}, ("cache.top_k=0",), "--set cache.top_k=0: cache.top_k: must be between 1 and num_classes (10), got 0"),
    ({}, ("student_train.lr=-1",), "--set student_train.lr=-1: student_train.lr: Input should be greater than 0"),
    ({}, ("cache.nokey=1",), "--set cache.nokey=1: cache.nokey: unknown key (cache takes: path, storage_options, top_k, temperatures, "),
    ({}, ("studnt_train.steps=3",), "--set studnt_train.steps=3: studnt_train: unknown key (did you mean student_train?)"),
    ({}, ("data.num_class=3",), "--set data.num_class=3: data.num_class: unknown key (did you mean data.num_classes?)"),
    ({}, ("cache.top_k",), "--set cache.top_k: expected KEY=VALUE"),
]


@pytest.mark.parametrize("over,sets,expect", CASES, ids=[c[2].split(": ")[1] + str(i) for i, c in enumerate(CASES)])
def test_config_errors_are_one_line_naming_the_key(tmp_path, over, sets, expect):
    msg = _err(tmp_path, tiny_config(tmp_path / "run", **over), sets)
    assert msg.startswith(expect), msg


def test_missing_key_and_missing_file(tmp_path):
    cfg = tiny_config(tmp_path / "run")
    del cfg["student"]
    assert _err(tmp_path, cfg) == "pipeline.yaml: student: required key is missing"
    del cfg["teacher"]  # no teacher: a consumer of cache.path (tests/test_sharing.py), which it must then name
    cfg["student"] = tiny_config(tmp_path / "run")["student"]
    assert _err(tmp_path, cfg) == "pipeline.yaml: cache.path: required for a pipeline without a teacher (the store to train from)"
    with pytest.raises(ConfigError, match="nofile.yaml: no such file"):
        load_config(tmp_path / "nofile.yaml")


def test_a_misspelled_key_is_reported_with_the_nearest_valid_one(tmp_path):
    cfg = tiny_config(tmp_path / "run")
    cfg["cache"]["topk"] = cfg["cache"].pop("top_k")  # two errors: `topk` unknown, `top_k` missing
    assert _err(tmp_path, cfg) == "pipeline.yaml: cache.topk: unknown key (did you mean cache.top_k?)"
    cfg = tiny_config(tmp_path / "run")
    cfg["distill"]["temprature"] = cfg["distill"].pop("temperature")  # has a default: only the unknown key
    assert _err(tmp_path, cfg) == "pipeline.yaml: distill.temprature: unknown key (did you mean distill.temperature?)"


def test_invalid_yaml_names_the_line(tmp_path):
    p = tmp_path / "pipeline.yaml"
    p.write_text("out: x\ncache: {top_k: [\n")
    with pytest.raises(ConfigError, match=r"pipeline.yaml: line \d+: invalid YAML"):
        load_config(p)


def test_set_goes_through_the_same_validation_and_applies(tmp_path):
    p = write_config(tmp_path / "pipeline.yaml", tiny_config(tmp_path / "run"))
    cfg = load_config(p, ["cache.top_k=5", "cache.temperatures=[2.0, 3.0]", "distill.feature={cached: penultimate, student_module: body}"])
    assert cfg.cache.top_k == 5 and cfg.cache.temperatures == [2.0, 3.0]
    assert cfg.distill.feature.student_module == "body"


def test_defaults_are_declared_once_in_the_schema(tmp_path):
    cfg = load_config(write_config(tmp_path / "pipeline.yaml", tiny_config(tmp_path / "run")))
    assert cfg.cache.values_dtype == "float16" and cfg.cache.path is None
    assert cfg.cache_path == Path(cfg.out) / "cache"
    with pytest.raises(Exception):
        cfg.cache.top_k = 4  # frozen: validated once, never mutated


def test_a_temperature_the_existing_store_lacks_is_refused_at_load(tiny_run, tmp_path):
    store = load_config(tiny_run).cache_path  # temperatures [1.0, 4.0]
    assert _err(tmp_path, tiny_config(tmp_path / "run", **{"cache.path": str(store), "distill.temperature": 2.0})) == (
        f"pipeline.yaml: distill.temperature: 2.0 is not one of the temperatures of the store at {store} [1.0, 4.0]; "
        "add it to cache.temperatures (the teacher pass then rebuilds the store)"
    )
    # the default place, <out>/cache, and a --set as the source
    with pytest.raises(ConfigError) as e:
        load_config(tiny_run, ["distill.temperature=3"])
    assert str(e.value).startswith(f"--set distill.temperature=3: distill.temperature: 3.0 is not one of the temperatures of the store at {store} [1.0, 4.0];")
    with pytest.raises(ConfigError, match=r"nor of cache.temperatures \[1.0, 2.0\]"):
        load_config(tiny_run, ["distill.temperature=3", "cache.temperatures=[1.0, 2.0]"])
    # accepted: one the store has, or one the changed cache section will make the teacher pass store
    assert load_config(tiny_run, ["distill.temperature=1.0"]).distill.temperature == 1.0
    assert load_config(tiny_run, ["distill.temperature=2", "cache.temperatures=[1.0, 2.0]"]).distill.temperature == 2.0
    # no store yet, or one whose manifest is unreadable: left to the stages
    assert load_config(write_config(tmp_path / "p.yaml", tiny_config(tmp_path / "new", **{"distill.temperature": 2.0})))
    bad = tmp_path / "bad-store"
    bad.mkdir()
    (bad / "zarr.json").write_text("{not json")
    assert load_config(tiny_run, ["distill.temperature=3", f"cache.path={bad}"])
