"""The CLI through typer's CliRunner, error paths included: exit 2 + one line, no traceback."""

import json

from typer.testing import CliRunner

from kd_pipeline.cli import app
from kd_pipeline.config import load_config
from kd_pipeline.errors import ConfigError
from tests.conftest import tiny_config, write_config

runner = CliRunner()


def test_help_lists_commands():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0 and "run" in r.output and "inspect" in r.output


def test_bad_config_exits_2_with_one_line(tmp_path):
    p = write_config(tmp_path / "p.yaml", tiny_config(tmp_path / "run"))
    r = runner.invoke(app, ["run", str(p), "--set", "cache.top_k=0"])
    assert r.exit_code == 2
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert lines == ["error: --set cache.top_k=0: cache.top_k: must be between 1 and num_classes (10), got 0"]
    assert "Traceback" not in r.output


def test_debug_shows_the_exception(tmp_path):
    p = write_config(tmp_path / "p.yaml", tiny_config(tmp_path / "run"))
    r = runner.invoke(app, ["--debug", "run", str(p), "--set", "cache.top_k=0"])
    assert r.exit_code != 0 and isinstance(r.exception, ConfigError)
    r = runner.invoke(app, ["run", str(p), "--set", "cache.top_k=0", "--debug"])
    assert r.exit_code != 0 and isinstance(r.exception, ConfigError)


def test_unknown_stage(tmp_path):
    p = write_config(tmp_path / "p.yaml", tiny_config(tmp_path / "run"))
    r = runner.invoke(app, ["run", str(p), "--stage", "train_techer"])
    assert r.exit_code == 2 and "--stage train_techer: no such stage" in r.output


def test_inspect_json_and_text(tiny_run):
    store = load_config(tiny_run).cache_path
    r = runner.invoke(app, ["inspect", str(store), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["manifest"]["top_k"] == 3 and info["splits"]["transfer"] == {"samples": 1200, "labelled": 0}
    assert info["target_bytes_per_row"] == 3 * 2 + 3 * 2 + 2 * 4
    r = runner.invoke(app, ["inspect", str(store)])
    assert r.exit_code == 0 and "complete" in r.output and "topk_logits" in r.output


def test_inspect_not_a_store(tmp_path):
    r = runner.invoke(app, ["inspect", str(tmp_path)])
    assert r.exit_code == 2 and "no store here" in r.output


def test_real_process_exit_codes_and_no_traceback(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "kd_pipeline.cli", "inspect", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: {tmp_path}: no store here (no zarr.json); run the cache_teacher stage first"]
    r = subprocess.run([sys.executable, "-m", "kd_pipeline.cli", "--debug", "inspect", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" in r.stderr
