"""A killed training stage resumes from its last checkpoint and ends with the same weights, bit for bit, as
a run that was never stopped (kd_pipeline/resume.py)."""

import json

from safetensors.torch import load_file

from kd_pipeline.config import load_config
from kd_pipeline.resume import TrainCheckpoint
from kd_pipeline.runner import run_pipeline
from tests.conftest import tiny_config, write_config
from tests.killing import kill9, start_paused


def _curve(path):
    return [{k: v for k, v in json.loads(x).items() if k != "time_s"} for x in path.read_text().splitlines()]


def test_killed_student_resumes_from_its_checkpoint_bit_for_bit(zygote, tiny_run, tmp_path, capfd):
    over = {"cache.path": str(load_config(tiny_run).cache_path), "student_train.checkpoint_every": 10}
    ref = load_config(write_config(tmp_path / "ref.yaml", tiny_config(tmp_path / "ref", **over)))
    run_pipeline(ref, only=["train_student"])  # never stopped

    y = write_config(tmp_path / "p.yaml", tiny_config(tmp_path / "run", **over))
    cfg = load_config(y)
    ckpt = cfg.out_dir / ".kd" / "ckpt" / "train_student.safetensors"
    pid = start_paused(zygote, y, "checkpoint:train_student:20", "train_student", tmp_path)
    kill9(pid)
    assert ckpt.is_file() and not (cfg.out_dir / "student.safetensors").exists()
    saved = load_file(str(ckpt))  # safetensors: tensors only, nothing to unpickle
    assert {"rng.torch.0", "param.0", "opt.0.exp_avg", "opt.0.exp_avg_sq", "opt.0.step"} <= set(saved)
    assert float(saved["opt.0.step"]) == 20

    capfd.readouterr()
    assert run_pipeline(cfg, only=["train_student"]) == ["train_student"]
    assert "train_student: resumed from the checkpoint at step 20" in capfd.readouterr().err
    got, want = load_file(str(cfg.out_dir / "student.safetensors")), load_file(str(ref.out_dir / "student.safetensors"))
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].numpy().tobytes() == want[k].numpy().tobytes(), k
    assert _curve(cfg.out_dir / "logs" / "train_student.jsonl") == _curve(ref.out_dir / "logs" / "train_student.jsonl")
    assert not ckpt.exists()  # removed once the stage's output is in place


def test_a_checkpoint_for_other_parameters_is_ignored(tmp_path):
    import torch

    model = torch.nn.Linear(3, 2)
    params = list(model.parameters())
    opt = torch.optim.Adam(params)
    TrainCheckpoint(tmp_path / "c.safetensors", 5, "identity-a", {"m": model}).save(5, params, opt, {"curve": []})
    assert TrainCheckpoint(tmp_path / "c.safetensors", 5, "identity-b", {"m": model}).restore(params, opt) is None
    assert TrainCheckpoint(tmp_path / "c.safetensors", 5, "identity-a", {"m": model}).restore(params, opt)[0] == 5
    (tmp_path / "c.safetensors").write_bytes(b"\x80\x04\x95 not safetensors")  # e.g. a pickle: never loaded
    assert TrainCheckpoint(tmp_path / "c.safetensors", 5, "identity-a", {"m": model}).restore(params, opt) is None
