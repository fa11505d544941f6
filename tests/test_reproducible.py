"""Same weights and metadata -> same checkpoint bytes, so a store's teacher.checkpoint_sha256 is reproducible."""

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from kd_pipeline.checkpoint import file_sha256, save_model
from kd_pipeline.config import load_config
from kd_pipeline.resume import TrainCheckpoint
from kd_pipeline.runner import run_pipeline
from tests.conftest import tiny_config, write_config


def test_two_identical_teacher_trainings_give_the_same_checkpoint_bytes(tmp_path):
    shas = []
    for name in ("a", "b"):
        cfg = load_config(write_config(tmp_path / f"{name}.yaml", tiny_config(tmp_path / name, **{"teacher_train.steps": 20})))
        assert run_pipeline(cfg, only=["train_teacher"]) == ["train_teacher"]
        shas.append(file_sha256(cfg.out_dir / "teacher.safetensors"))
    assert shas[0] == shas[1]


def test_saving_the_same_state_again_gives_the_same_bytes(tmp_path):
    # safetensors orders its header from a hash map: with 3+ metadata keys, 8 saves in one process used to
    # give several different files
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    meta = {"factory": "kd_pipeline.models:mlp", "kwargs": {"in_features": 4, "hidden": [3]}, "store": "runs/x/cache"}
    files = set()
    for i in range(8):
        m = dict(reversed(meta.items())) if i % 2 else meta  # same metadata, keys given in another order
        save_model(model, tmp_path / f"m{i}.safetensors", m)
        files.add((tmp_path / f"m{i}.safetensors").read_bytes())
    assert len(files) == 1
    got = load_file(str(tmp_path / "m0.safetensors"))
    assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())
    with safe_open(str(tmp_path / "m0.safetensors"), "pt") as f:
        assert f.metadata()["factory"] == '"kd_pipeline.models:mlp"'

    params = list(model.parameters())
    opt = torch.optim.Adam(params)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    ckpts = set()
    for i in range(8):
        c = TrainCheckpoint(tmp_path / f"c{i}.safetensors", 5, "identity", {"m": model})
        c.save(5, params, opt, {"curve": [{"step": 5, "loss": 1.0}], "acc": {}, "n_acc": 0})
        ckpts.add(c.path.read_bytes())
    assert len(ckpts) == 1
    assert TrainCheckpoint(tmp_path / "c0.safetensors", 5, "identity", {"m": model}).restore(params, opt)[0] == 5
