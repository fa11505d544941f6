"""Progress when the output is not a terminal: one plain line per long step every KD_PROGRESS_INTERVAL s."""

import re
import statistics

from typer.testing import CliRunner

from kd_pipeline.cli import app
from tests.conftest import tiny_config, write_config

LINE = re.compile(r"^train_teacher: ([\d,]+)/600 \((\d+)%\), ([\d,]+) rows/s, elapsed ([\d.]+) s, (ETA [\d.:]+( s)?|done)$")


def test_a_piped_run_prints_a_line_at_each_interval(tmp_path):
    p = write_config(tmp_path / "p.yaml", tiny_config(tmp_path / "run", **{"teacher_train.steps": 600}))
    r = CliRunner().invoke(app, ["run", str(p), "--stage", "train_teacher"], env={"KD_PROGRESS_INTERVAL": "0.2"})
    assert r.exit_code == 0, r.output
    got = [LINE.match(x) for x in r.output.splitlines() if x.startswith("train_teacher: ") and "done in" not in x]
    assert got and all(got), r.output  # every progress line has the plain format (no rich bar)
    assert got[-1].group(5) == "done" and got[-1].group(1) == "600"
    ticks = got[:-1]
    assert len(ticks) >= 3, r.output
    elapsed = [float(m.group(4)) for m in ticks]
    gaps = [b - a for a, b in zip(elapsed, elapsed[1:])]
    assert 0.15 <= statistics.median(gaps) <= 0.5, gaps  # the interval, allowing for a busy machine
    assert 0.1 <= elapsed[0] <= 1.0, elapsed
    done = [int(m.group(1).replace(",", "")) for m in ticks]
    assert done == sorted(done) and all(int(m.group(3).replace(",", "")) > 0 for m in ticks[1:])


def test_a_bad_interval_is_one_error_line(tmp_path):
    p = write_config(tmp_path / "p.yaml", tiny_config(tmp_path / "run", **{"teacher_train.steps": 5}))
    r = CliRunner().invoke(app, ["run", str(p), "--stage", "train_teacher"], env={"KD_PROGRESS_INTERVAL": "soon"})
    assert r.exit_code == 2
    assert r.output.splitlines() == ["error: KD_PROGRESS_INTERVAL=soon: expected seconds between progress lines, > 0"]  # before any stage


def test_piped_output_keeps_stage_lines_and_long_lines_whole(tiny_run, tmp_path):
    """`kd … | tee log`: stage lines go to stdout with the progress and the summary, and a line longer than 80
    columns is not folded (rich's width for a non-terminal)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from kd_pipeline.config import load_config

    kd = str(Path(sys.executable).with_name("kd"))
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    p = write_config(tmp_path / "p.yaml", tiny_config(tmp_path / "run"))
    r = subprocess.run([kd, "run", str(p), "--stage", "prepare_data"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "prepare_data: done in" in r.stdout and "prepare_data" not in r.stderr
    r = subprocess.run([kd, "inspect", str(load_config(tiny_run).cache_path)], capture_output=True, text=True, env=env)
    head = [x for x in r.stdout.splitlines() if x.startswith("rows ")]
    assert len(head) == 1 and len(head[0]) > 80 and head[0].rstrip().endswith(("ids plain", "ids packed")), r.stdout
