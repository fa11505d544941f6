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
