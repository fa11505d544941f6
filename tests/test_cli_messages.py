"""What a person sees from `kd`: version, help, messages that name what they wrote, Ctrl-C. Through CliRunner."""

import sys

from typer.testing import CliRunner

from kd_pipeline.cli import app
from tests.conftest import tiny_config, write_config

runner = CliRunner()


def _lines(out: str) -> list[str]:
    return [x for x in out.splitlines() if x.strip()]


def test_a_factory_module_in_the_working_directory_is_found_without_pythonpath(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        "from kd_pipeline.models import mlp\n\n\ndef small_mlp(num_classes, width=8):\n"
        "    return mlp(num_classes, in_features=40, hidden=(width,))\n"
    )
    cfg = tiny_config(tmp_path / "run", **{"student.factory": "my_models:small_mlp", "student.kwargs": {"width": 6}})
    write_config(tmp_path / "pipeline.yaml", cfg)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    try:
        r = runner.invoke(app, ["run", "pipeline.yaml", "--stage", "train_baseline"])
    finally:
        sys.modules.pop("my_models", None)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "baseline.safetensors").is_file()


def test_a_wrong_module_path_names_the_key_the_user_wrote_and_the_model(tiny_run, tmp_path):
    from kd_pipeline.config import load_config

    over = {"cache.path": str(load_config(tiny_run).cache_path)}
    p = write_config(tmp_path / "p.yaml", tiny_config(tmp_path / "run", **over))
    r = runner.invoke(app, ["run", str(p), "--stage", "train_student", "--set", "distill.feature={cached: penultimate, student_module: bdy}"])
    assert r.exit_code == 2
    assert _lines(r.output)[-1:] == ["error: distill.feature.student_module: no module 'bdy' in the student (some are: body, body.0, body.1, body.2, head)"]

    p = write_config(tmp_path / "q.yaml", tiny_config(tmp_path / "run2", **{"teacher_train.steps": 5, "cache.features": {"penultimate": "bdy"}}))
    r = runner.invoke(app, ["run", str(p), "--stage", "train_teacher", "--stage", "cache_teacher"])
    assert r.exit_code == 2
    assert _lines(r.output)[-1].startswith("error: cache.features.penultimate: no module 'bdy' in the teacher (some are: body, body.0, ")


def test_a_temperature_the_store_lacks_stops_kd_run_before_any_stage(tiny_run):
    from kd_pipeline.config import load_config

    store = load_config(tiny_run).cache_path
    r = runner.invoke(app, ["run", str(tiny_run), "--set", "distill.temperature=2"])
    assert r.exit_code == 2
    assert _lines(r.output) == [
        f"error: --set distill.temperature=2: distill.temperature: 2.0 is not one of the temperatures of the store at {store} "
        "[1.0, 4.0]; add it to cache.temperatures (the teacher pass then rebuilds the store)"
    ]


def test_ctrl_c_says_what_was_kept_and_exits_130(tmp_path):
    import signal
    import threading
    import time

    over = {"teacher_train.steps": 20_000, "teacher_train.checkpoint_every": 20}  # minutes; interrupted at step 20+
    p = write_config(tmp_path / "p.yaml", tiny_config(tmp_path / "run", **over))
    ckpt = tmp_path / "run" / ".kd" / "ckpt" / "train_teacher.safetensors"
    main = threading.main_thread().ident

    def ctrl_c_after_the_first_checkpoint():
        deadline = time.monotonic() + 120  # no checkpoint by then: interrupt anyway, the asserts below fail
        while not ckpt.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        signal.pthread_kill(main, signal.SIGINT)  # what the terminal sends on Ctrl-C

    # Python's handler, as in a terminal: a shell starts background jobs (`pytest &`) with SIGINT ignored
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    watcher = threading.Thread(target=ctrl_c_after_the_first_checkpoint, daemon=True)
    try:
        watcher.start()
        r = runner.invoke(app, ["run", str(p)])
        watcher.join()
    finally:
        signal.signal(signal.SIGINT, before)
    assert r.exit_code == 130, r.output
    assert _lines(r.output)[-1] == (
        "interrupted: finished stages, finished store blocks and the last training checkpoint are kept; "
        "run the same command again to resume"
    )
    assert ckpt.is_file() and not (tmp_path / "run" / "teacher.safetensors").exists()


def test_version():
    from importlib.metadata import version

    import kd_pipeline

    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output == f"kd {kd_pipeline.__version__}\n"
    assert kd_pipeline.__version__ == version("kd-pipeline")  # pyproject.toml and the package agree


def test_run_help_lists_the_stages():
    import re

    from kd_pipeline.runner import load_stages

    r = runner.invoke(app, ["run", "--help"])
    assert r.exit_code == 0
    for stage in load_stages():
        assert re.search(rf"(?<!\w){stage.NAME}(?!\w)", r.output), stage.NAME
