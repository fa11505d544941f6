"""`kd export RUN --format onnx`: round trip of the tiny run's student through torch.onnx.export and
onnxruntime, the int8 path, an LM, and the refusals (no config, no checkpoint, a checkpoint the config does not
describe, an ONNX graph that differs from the torch model, a tolerance tighter than the measured difference)."""

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kd_pipeline import export as ex
from kd_pipeline.cli import app
from kd_pipeline.config import load_config
from kd_pipeline.runner import run_pipeline
from tests.conftest import write_config
from tests.test_lm_pipeline import lm_config

ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install -e '.[onnx]'")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed: pip install -e '.[onnx]'")
runner = CliRunner()


def copy_run(tiny_run, dest, drop=()):
    """The parts of the session's tiny run that export reads: .kd/pipeline.json and the checkpoints."""
    src = load_config(tiny_run).out_dir
    (dest / ".kd").mkdir(parents=True)
    for rel in [".kd/pipeline.json", "student.safetensors", "baseline.safetensors", "teacher.safetensors"]:
        if rel not in drop:
            shutil.copy(src / rel, dest / rel)
    return dest


def kd_export(*args):
    return runner.invoke(app, ["export", *map(str, args), "--latency-runs", "5"])


def refused(r, *words):
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (r.exit_code, r.output)
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def assert_close_logits(got: np.ndarray, ref: torch.Tensor):
    ref = ref.detach().numpy()
    np.testing.assert_allclose(got, ref, atol=ex.TOLERANCE * max(1.0, float(np.abs(ref).max())), rtol=0)


def test_round_trip_and_int8(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path / "run")
    r = kd_export(run, "--int8", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    fp32, int8 = rep["results"]["onnxruntime_fp32"], rep["results"]["onnxruntime_int8"]
    assert rep["compared"] == 400 and rep["opset"] == ex.OPSET  # the tiny run's whole test split
    assert fp32["relative_logit_diff"] <= ex.TOLERANCE and fp32["top1_agreement"] == 1.0
    assert fp32["accuracy"] == rep["results"]["torch"]["accuracy"]
    assert 0 < int8["max_abs_logit_diff"] and int8["top1_agreement"] >= 0.9 and int8["bytes"] < fp32["bytes"]
    assert json.loads((run / "export" / "student.json").read_text()) == rep
    assert sorted(p.name for p in (run / "export").iterdir()) == ["student.int8.onnx", "student.json", "student.onnx"]

    # independently of export.py: the file runs in onnxruntime at batch sizes it was not traced with
    cfg = load_config(tiny_run)
    model = ex.load_trained(run, ex.load_run_config(run), "student")
    x = ex.test_set(cfg, run).x
    sess = ort.InferenceSession(str(run / "export" / "student.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 7, 400):
        assert_close_logits(sess.run(None, {sess.get_inputs()[0].name: x[:n].numpy()})[0], model(x[:n]))

    # a tolerance below the measured difference is refused, and the earlier export does not survive it
    if fp32["relative_logit_diff"] == 0:
        pytest.skip("onnxruntime matched torch bit for bit: no tolerance below the difference to test")
    line = refused(kd_export(run, "--tolerance", fp32["relative_logit_diff"] / 2), "differs from torch", "not written")
    assert "student.onnx" in line and not any((run / "export").iterdir())


def test_a_graph_that_differs_from_the_model_is_refused(tiny_run, tmp_path, monkeypatch):
    run = copy_run(tiny_run, tmp_path / "run")
    real = ex.export_onnx

    def export_then_change_the_model(model, example, axes, path):  # the ONNX file no longer matches torch
        real(model, example, axes, path)
        with torch.no_grad():
            model.head.bias[0] += 1e-3

    monkeypatch.setattr(ex, "export_onnx", export_then_change_the_model)
    refused(kd_export(run, "--int8"), "max |Δlogit| 0.001 over max(1, max |logit|", "tolerance 1e-05", "not written")
    assert not any((run / "export").iterdir())


def test_refusals_name_what_is_missing(tiny_run, tmp_path, monkeypatch):
    refused(kd_export(copy_run(tiny_run, tmp_path / "a", drop=[".kd/pipeline.json"])), "pipeline.json", "run `kd run` first")
    refused(kd_export(copy_run(tiny_run, tmp_path / "b", drop=["student.safetensors"])), "student.safetensors", "no student checkpoint")
    run = copy_run(tiny_run, tmp_path / "c")
    refused(kd_export(run, "--model", "assistant"), "--model assistant")
    refused(kd_export(run, "--format", "tflite"), "--format tflite")
    p = run / ".kd" / "pipeline.json"
    d = json.loads(p.read_text())
    d["student"]["kwargs"]["hidden"] = [17]  # the config moved on; the checkpoint did not
    p.write_text(json.dumps(d))
    refused(kd_export(run), "student.safetensors: trained as", "rerun `kd run`")
    p.write_text("{")
    refused(kd_export(run), "pipeline.json: not JSON")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    refused(kd_export(run), "needs onnxruntime", ".[onnx]")


def test_lm_export_has_dynamic_batch_and_token_axes(tmp_path):
    # the hard-label LM student needs only the tokens and its own stage, not the teacher or the store
    cfg = load_config(write_config(tmp_path / "p.yaml", lm_config(tmp_path / "run")))
    run_pipeline(cfg, only=["prepare_data", "train_baseline"])
    r = kd_export(cfg.out_dir, "--model", "baseline", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    fp32 = rep["results"]["onnxruntime_fp32"]
    assert rep["unit"] == "token positions" and rep["compared"] > 500
    assert fp32["relative_logit_diff"] <= ex.TOLERANCE and fp32["top1_agreement"] == 1.0
    model = ex.load_trained(cfg.out_dir, cfg, "baseline")
    sess = ort.InferenceSession(str(cfg.out_dir / "export" / "baseline.onnx"), providers=["CPUExecutionProvider"])
    for shape in [(1, 5), (3, 32)]:
        x = torch.randint(0, 320, shape)
        assert_close_logits(sess.run(None, {"input": x.numpy()})[0], model(x))
