"""What a person sees (issue 12): the run summary, `kd report`, `kd plan` / `kd run --dry-run`, `kd sweep`, and the
validation curves behind the report — through the CLI, error paths included."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kd_pipeline.cli import app
from kd_pipeline.config import load_config
from kd_pipeline.runner import load_stages, run_pipeline, stale_reasons
from tests.conftest import tiny_config, write_config
from tests.test_sharing import consumer_config, tree

runner = CliRunner()


def lines(output: str) -> list[str]:
    return [x for x in output.splitlines() if x.strip()]


def summary_table(output: str) -> dict[str, str]:
    """kd run's summary: label -> value (labels of one word; the model names are checked on their own)."""
    after = output[output.index("── kd run: "):].splitlines()[1:]
    return {line.split()[0]: line.split(None, 1)[1] for line in after if line.startswith("  ") and line.split()}


def stage_lines(output: str) -> dict[str, str]:
    """kd plan's stage lines: stage -> what it says."""
    return {line.split()[0]: line.split(None, 1)[1] for line in lines(output) if line.startswith("  ")}


def stage(name: str):
    return next(s for s in load_stages() if s.NAME == name)


# ------------------------------------------------------------------------------------------ run summary


def test_run_ends_with_a_summary_table_of_results_store_stages_and_report(tiny_run):
    r = runner.invoke(app, ["run", str(tiny_run)])
    assert r.exit_code == 0, r.output
    out = r.output
    m = json.loads((load_config(tiny_run).out_dir / "metrics.json").read_text())["models"]
    for name, label in (("teacher", "teacher"), ("student", "KD student"), ("baseline", "baseline (hard labels)")):
        assert f"{label}" in out and f"{100 * m[name]['test']['accuracy']:.2f}% test accuracy" in out
    gain = 100 * (m["student"]["test"]["accuracy"] - m["baseline"]["test"]["accuracy"])
    assert f"{gain:+.2f} points of accuracy" in out
    assert "2,000 rows × 100 B/row" in out  # 3 values + 3 ids (2 B each) + 2 lse (4 B) + 40 feature halves
    table = summary_table(out)
    for s in ("prepare_data", "train_teacher", "cache_teacher", "train_student", "train_baseline", "evaluate"):
        assert table[s] == "up to date (skipped)"
    assert table["report"] == str(load_config(tiny_run).out_dir / "report.md")


def test_summary_of_a_consumer_shows_the_teachers_accuracy_from_the_store(tiny_run, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(load_config(tiny_run).cache_path, store, ignore=shutil.ignore_patterns("_lock*"))
    p = write_config(tmp_path / "c.yaml", consumer_config(tmp_path / "run", store, **{"student_train.steps": 10}))
    r = runner.invoke(app, ["run", str(p)])
    assert r.exit_code == 0, r.output
    fs = json.loads((tmp_path / "run" / "metrics.json").read_text())["from_store"]
    row = next(line for line in lines(r.output) if "from the store's targets" in line)
    assert row.split()[0] == "teacher" and f"{100 * fs['teacher']['accuracy']:.2f}% test accuracy" in row
    table = summary_table(r.output)
    assert all(table[s].endswith(" s") for s in ("train_student", "train_baseline", "evaluate"))  # each ran: its wall time
    assert "train_teacher" not in table  # a consumer has no teacher stages


# ----------------------------------------------------------------------------------------------- report


def test_report_says_which_settings_produced_the_results(tiny_run):
    cfg = load_config(tiny_run)
    r = runner.invoke(app, ["report", str(cfg.out_dir)])
    assert r.exit_code == 0, r.output
    md = (cfg.out_dir / "report.md").read_text()
    assert "## Settings that produced these results" in md
    assert "α = 0.3" in md and "τ = 4" in md and "(1 − α)·τ² = 11.2" in md and "k = 3 of 10 classes" in md
    assert "30 steps × batch 50, Adam lr 0.001 (from stamp)" in md  # the student's, read from its stamp
    assert "200 steps × batch 50" in md  # the teacher's
    assert "**KD gain:" in md and "| KD student | test |" in md and "| baseline (hard labels) | test |" in md
    assert "2,000 rows × 100 B/row (targets 20 + features 80)" in md and "on disk" in md
    assert "Teacher confidence (top-1 probability) over 2,000 of its rows: mean 0." in md and "at τ = 1; mean 0." in md and "at τ = 4." in md
    assert "No validation curve: set `student_train.eval_every`" in md  # the tiny config has none
    assert (cfg.out_dir / "report.png").stat().st_size > 10_000


def test_report_error_paths(tmp_path, tiny_run):
    r = runner.invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 2 and lines(r.output) == [f"error: {tmp_path}/.kd/pipeline.json: missing; run `kd run` first (it records the resolved config there)"]
    run = tmp_path / "run"
    (run / ".kd").mkdir(parents=True)
    shutil.copy(load_config(tiny_run).out_dir / ".kd" / "pipeline.json", run / ".kd" / "pipeline.json")
    r = runner.invoke(app, ["report", str(run)])
    assert r.exit_code == 2 and lines(r.output) == [f"error: {run}/metrics.json: missing; run `kd run` first (its evaluate stage writes the metrics the report shows)"]


def test_validation_curve_in_the_log_and_the_same_weights_as_without(tiny_run, tmp_path):
    """eval_every adds accuracy points to the stage's log and changes nothing of the training."""
    src = load_config(tiny_run)
    got = {}
    for every in (0, 10):
        d = tiny_config(tmp_path / f"run{every}", **{"student_train.eval_every": every, "cache.path": str(src.cache_path)})
        cfg = load_config(write_config(tmp_path / f"p{every}.yaml", d))
        run_pipeline(cfg, only=["train_student"])
        got[every] = (cfg.out_dir / "student.safetensors").read_bytes()
    assert got[0] == got[10]
    log = [json.loads(x) for x in (tmp_path / "run10" / "logs" / "train_student.jsonl").read_text().splitlines()]
    evals = [r for r in log if "eval" in r]
    assert [r["step"] for r in evals] == [10, 20, 30]
    assert all(r["eval"]["split"] == "test" and r["eval"]["rows"] == 400 and 0 <= r["eval"]["accuracy"] <= 1 for r in evals)
    assert [r["step"] for r in log if "loss" in r] == [10, 20, 30]
    assert "eval" not in (tmp_path / "run0" / "logs" / "train_student.jsonl").read_text()


def test_eval_every_off_keeps_the_stamps_of_older_runs_valid():
    from kd_pipeline.config import TrainConfig

    assert "eval_every" not in TrainConfig(steps=1, batch_size=1, lr=1.0).model_dump()
    assert TrainConfig(steps=1, batch_size=1, lr=1.0, eval_every=5).model_dump()["eval_every"] == 5


# ------------------------------------------------------------------------------------------------- plan


def test_plan_says_which_parameter_changed_from_what(tiny_run):
    r = runner.invoke(app, ["plan", str(tiny_run), "--set", "distill.alpha=0.5"])
    assert r.exit_code == 0, r.output
    got = stage_lines(r.output)
    assert got["train_student"] == "would run: distill.alpha changed (0.3 -> 0.5)"
    assert got["evaluate"].startswith("would run: input ") and "student.safetensors is rebuilt by train_student" in got["evaluate"]
    for s in ("prepare_data", "train_teacher", "cache_teacher", "train_baseline"):
        assert got[s] == "up to date"
    assert "store: reads" in r.output and "2,000 rows × 100 B/row" in r.output
    assert "teacher pass" not in r.output  # the store is up to date: no probe
    dry = runner.invoke(app, ["run", str(tiny_run), "--dry-run", "--set", "distill.alpha=0.5"])
    assert dry.exit_code == 0 and dry.output == r.output
    assert json.loads((load_config(tiny_run).out_dir / ".kd" / "stamps" / "train_student.json").read_text())["values"]["distill"]["alpha"] == 0.3


def test_plan_of_a_new_folder_checks_the_data_sizes_the_store_and_times_the_teacher(tmp_path):
    p = write_config(tmp_path / "p.yaml", tiny_config(tmp_path / "run"))
    r = runner.invoke(app, ["plan", str(p), "--probe-batches", "2"])
    assert r.exit_code == 0, r.output
    got = stage_lines(r.output)
    assert got["prepare_data"] == "ran now, as the plan needs its data summary (not run yet in this run folder)"
    assert got["train_teacher"] == "would run: not run yet in this run folder"
    assert f"store: would write {tmp_path}/run/cache: 2,000 rows × 100 B/row = 195.3 KiB" in r.output and ": fits" in r.output
    line = next(x for x in lines(r.output) if x.startswith("teacher pass:"))
    assert "rows/s on cpu" in line and "initial weights" in line
    assert not (tmp_path / "run" / "cache").exists() and not (tmp_path / "run" / "teacher.safetensors").exists()
    j = runner.invoke(app, ["plan", str(p), "--json", "--probe-batches", "1"])
    plan = json.loads(j.output)
    assert plan["store"]["bytes"] == 2000 * 100 and plan["probe"]["rows_per_s"] > 0


def test_plan_errors_and_old_stamps(tiny_run, tmp_path):
    r = runner.invoke(app, ["plan", str(tiny_run), "--stage", "train_techer"])
    assert r.exit_code == 2 and lines(r.output) == ["error: --stage train_techer: no such stage (stages: prepare_data, train_teacher, "
                                                    "cache_teacher, train_student, train_baseline, born_again, evaluate)"]
    # a stamp written before stamps kept values: the reason names the sections, not the key
    src = load_config(tiny_run)
    shutil.copytree(src.out_dir / ".kd", tmp_path / ".kd")
    cfg = load_config(tiny_run, [f"out={tmp_path}", "distill.alpha=0.5"])
    sp = tmp_path / ".kd" / "stamps" / "train_student.json"
    st = json.loads(sp.read_text())
    del st["values"], st["code_files"]
    sp.write_text(json.dumps(st))
    why = stale_reasons(cfg, stage("train_student"))
    assert why[0] == "its parameters changed (seed, kind, student, student_train, distill; the stamp predates recorded values: it keeps only their hash)"


# ------------------------------------------------------------------------------------------------ sweep


def test_sweep_trains_cells_in_workers_resumes_and_never_writes_the_store(tiny_run):
    cfg = load_config(tiny_run)
    before = tree(cfg.cache_path)
    args = ["sweep", str(tiny_run), "--tau", "1,4", "--alpha", "0.3", "--set", "student_train.steps=10"]
    r = runner.invoke(app, args + ["--jobs", "2"])
    assert r.exit_code == 0, r.output
    assert r.output.count("(trained and measured in") == 3  # two cells and the baseline (steps differ from the pipeline's)
    folder = cfg.out_dir / "sweep"
    s = json.loads((folder / "sweep.json").read_text())
    assert sorted((c["tau"], c["alpha"]) for c in s["cells"]) == [(1.0, 0.3), (4.0, 0.3)]
    assert all(0 <= c["accuracy"] <= 1 and c["rows"] == 400 for c in s["cells"])
    assert s["baseline"]["source"].endswith("sweep/baseline/baseline.safetensors")
    assert (folder / "sweep.png").stat().st_size > 5000 and "| 0.3 |" in (folder / "sweep.md").read_text()
    assert tree(cfg.cache_path) == before  # read only: not a byte changed, not a file (lock) added

    r = runner.invoke(app, args)  # resumed: every finished cell is skipped
    assert r.exit_code == 0 and r.output.count("(done before, skipped)") == 3, r.output
    shutil.rmtree(folder / "tau4_alpha0.3")
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and r.output.count("(trained and measured in") == 1 and "τ=4 α=0.3" in r.output
    again = {(c["tau"], c["alpha"]): c["accuracy"] for c in json.loads((folder / "sweep.json").read_text())["cells"]}
    assert again == {(c["tau"], c["alpha"]): c["accuracy"] for c in s["cells"]}  # retrained: the same student


@pytest.mark.parametrize("args, message", [
    (["--tau", "1,3", "--alpha", "0.5"], "error: --tau 3: not one of the store's temperatures [1.0, 4.0] (the teacher pass stores the exact "
                                         "tail for those alone); add it to cache.temperatures, which rebuilds the store"),
    (["--tau", "1", "--alpha", "0.5,1.5"], "error: --alpha 0.5,1.5: 1.5 is outside [0, 1]"),
    (["--tau", "one", "--alpha", "0.5"], "error: --tau one: expected numbers separated by commas, e.g. 1,2,4"),
    (["--tau", "1", "--alpha", "0.5", "--set", "distill.mode=online"],
     "error: kd sweep: distill.mode cached from the pipeline's one store only (not online, mutual or distill.teachers)"),
])
def test_sweep_refusals_are_one_line(tiny_run, args, message):
    r = runner.invoke(app, ["sweep", str(tiny_run), *args])
    assert r.exit_code == 2 and lines(r.output) == [message]


# ------------------------------------------------------------------------------------------- sequence


def test_a_sequence_pipeline_plans_in_tokens_and_reports_perplexity(tmp_path):
    from tests.test_lm_pipeline import lm_config

    d = lm_config(tmp_path / "run", **{"student_train.eval_every": 5})
    d["evaluate"] = {"latency_runs": 5, "curve_rows": 300}
    p = write_config(tmp_path / "lm.yaml", d)
    plan = runner.invoke(app, ["plan", str(p), "--probe-batches", "1"])
    assert plan.exit_code == 0, plan.output
    assert "tokens × " in plan.output and "B/token" in plan.output and "tokens/s on cpu" in plan.output
    r = runner.invoke(app, ["run", str(p)])
    assert r.exit_code == 0, r.output
    table = r.output[r.output.index("── kd run: "):]
    for label in ("teacher", "KD student", "baseline (hard labels)"):
        assert any(line.strip().startswith(label) and "test perplexity" in line for line in table.splitlines()), label
    assert "perplexity " in summary_table(r.output)["KD"] and "lower is better" in table
    log = [json.loads(x) for x in (tmp_path / "run" / "logs" / "train_student.jsonl").read_text().splitlines()]
    evals = [x["eval"] for x in log if "eval" in x]
    assert len(evals) == 2 and all(e["split"] == "val" and e["perplexity"] > 1 and 0 < e["rows"] <= 300 for e in evals)
    md = (tmp_path / "run" / "report.md").read_text()
    assert "test perplexity" in md and "the first" in md and "`val` split" in md and "no validation split" not in md
