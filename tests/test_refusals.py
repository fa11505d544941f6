"""Clear errors for people, through the real CLI: exit 2, one line, no traceback.

Config mistakes (each case of test_config.py plus more `--set` ones), and the student stage refusing a
store that is missing or was made for other data, classes or another teacher, naming the stage to run."""

import shutil

import pytest
from typer.testing import CliRunner

from kd_pipeline.checkpoint import save_model
from kd_pipeline.cli import app
from kd_pipeline.config import load_config
from kd_pipeline.models import build_model
from tests.conftest import tiny_config, write_config
from tests.test_config import CASES

runner = CliRunner()

MORE_CASES = [
    ({}, ("teacher.factory=kd_pipeline.nosuch:net",), "--set teacher.factory=kd_pipeline.nosuch:net: teacher.factory: cannot import module 'kd_pipeline.nosuch'"),
    ({}, ("student.kwargs.hiden=[10]",), "--set student.kwargs.hiden=[10]: student.kwargs: got an unexpected keyword argument 'hiden'"),
    ({}, ("student_train.steps=many",), "--set student_train.steps=many: student_train.steps: Input should be a valid integer"),
    ({}, ("distill.alpha=2",), "--set distill.alpha=2: distill.alpha: Input should be less than or equal to 1"),
    ({}, ("cache.chunk_rows=0",), "--set cache.chunk_rows=0: cache.chunk_rows: Input should be greater than or equal to 1"),
    ({"data.kwargs": {"num_samples": 2000, "labeled": 400}}, (), "pipeline.yaml: data.kwargs: got an unexpected keyword argument 'labeled'"),
    ({"student_train.checkpoint_every": -1}, (), "pipeline.yaml: student_train.checkpoint_every: Input should be greater than or equal to 0"),
    ({"cache.values_dtype": "float8"}, (), "pipeline.yaml: cache.values_dtype: Input should be 'float16', 'float32' or 'uint8'"),
]


def one_error_line(r) -> str:
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    lines = [x for x in r.output.splitlines() if x.strip() and not x.startswith(("train_", "cache_", "evaluate"))]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    return lines[0][len("error: "):]


@pytest.mark.parametrize("over,sets,expect", CASES + MORE_CASES, ids=[f"case{i}" for i in range(len(CASES + MORE_CASES))])
def test_config_mistakes_through_the_cli(tmp_path, over, sets, expect):
    p = write_config(tmp_path / "pipeline.yaml", tiny_config(tmp_path / "run", **over))
    args = ["run", str(p), *[a for s in sets for a in ("--set", s)]]
    msg = one_error_line(runner.invoke(app, args)).replace(str(p), "pipeline.yaml")
    assert msg.startswith(expect), msg


def test_missing_pipeline_file_through_the_cli(tmp_path):
    assert one_error_line(runner.invoke(app, ["run", str(tmp_path / "nofile.yaml")])) == f"{tmp_path / 'nofile.yaml'}: no such file"


@pytest.fixture
def copied_run(tiny_run, tmp_path):
    """A copy of the session's finished run folder (teacher checkpoint and store included)."""
    shutil.copytree(load_config(tiny_run).out_dir, tmp_path / "run")
    return tmp_path / "run"


def _student(tmp_path, run, sets=(), **over):
    p = write_config(tmp_path / "p.yaml", tiny_config(run, **over))
    return one_error_line(runner.invoke(app, ["run", str(p), "--stage", "train_student", *[a for s in sets for a in ("--set", s)]]))


def test_student_refuses_a_store_from_another_teacher_checkpoint(copied_run, tmp_path):
    cfg = load_config(write_config(tmp_path / "q.yaml", tiny_config(copied_run)))
    retrained = build_model(cfg.teacher, 10)  # another teacher of the same architecture
    save_model(retrained, copied_run / "teacher.safetensors", {"factory": cfg.teacher.factory})
    msg = _student(tmp_path, copied_run)
    assert "store was made by another teacher checkpoint (sha256 " in msg
    assert msg.endswith("run `kd run --stage cache_teacher` to rebuild it")


def test_student_refuses_a_store_from_another_teacher_config(copied_run, tmp_path):
    msg = _student(tmp_path, copied_run, **{"teacher.kwargs": {"channels": 16}})
    assert "store was made by teacher kd_pipeline.models:conv1d_net {'channels': 8}, the config's teacher is kd_pipeline.models:conv1d_net {'channels': 16}" in msg


@pytest.mark.parametrize(
    "sets,expect",
    [
        (["data.kwargs.seed=8"], "store was made for other data (dataset fingerprint sha256:"),
        (["data.num_classes=11"], "store has num_classes=10, data.num_classes is 11; re-run cache_teacher"),
    ],
)
def test_student_refuses_a_store_for_other_data_through_the_cli(copied_run, tmp_path, sets, expect):
    msg = _student(tmp_path, copied_run, sets)
    assert expect in msg and "kd run --stage cache_teacher" in msg


def test_student_with_no_store_through_the_cli(tmp_path):
    msg = _student(tmp_path, tmp_path / "run")
    assert msg == f"{tmp_path / 'run' / 'cache'}: no store here (no zarr.json); run the cache_teacher stage first"


def test_student_with_an_incomplete_store_through_the_cli(copied_run, tmp_path):
    from kd_pipeline.store.files import write_manifest
    import json

    meta = json.loads((copied_run / "cache" / "zarr.json").read_text())["attributes"]["kd_cache"]
    write_manifest(copied_run / "cache", {**meta, "complete": False})
    msg = _student(tmp_path, copied_run)
    assert msg.endswith("store is incomplete (complete: false); rerun the cache_teacher stage to finish it")


@pytest.mark.parametrize("command", ["plan", "run"])
def test_a_cache_path_holding_a_users_files_is_refused_before_the_teacher_trains(command, tmp_path):
    """Found only at the teacher pass, after hours of teacher training, it would cost those hours: kd plan and
    kd run refuse it before any stage, and leave the folder as it was (no lock files)."""
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes")
    p = write_config(tmp_path / "p.yaml", tiny_config(tmp_path / "run", **{"cache.path": str(folder)}))
    msg = one_error_line(runner.invoke(app, [command, str(p)]))
    assert msg == f"{folder}: exists and is not a kd-cache store (holds ['notes.txt', 'sub']); choose another cache.path or empty it yourself"
    assert sorted(x.name for x in folder.iterdir()) == ["notes.txt", "sub"]
    assert not (tmp_path / "run" / "teacher.safetensors").exists() and not (tmp_path / "run" / "data").exists()
