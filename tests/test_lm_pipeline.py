"""The LM track end to end at tiny sizes: stdlib corpus -> BPE -> teacher -> sequence store -> students ->
metrics; the student stage runs from the store alone; sampled + 8-bit targets train; a tiny Hugging Face
GPT-2 saved to a temp folder serves as teacher and student, offline."""

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from kd_pipeline.cli import app
from kd_pipeline.config import load_config
from kd_pipeline.lm.corpus import split_of, stdlib_files
from kd_pipeline.runner import run_pipeline
from kd_pipeline.store import open_store
from tests.conftest import set_keys, write_config

CTX = 32


def lm_config(out, **over) -> dict:
    model = "kd_pipeline.lm.model:transformer_lm"
    cfg = {
        "out": str(out),
        "kind": "sequence",
        "data": {"factory": "kd_pipeline.lm.corpus:stdlib_corpus", "kwargs": {"max_bytes": 40000}, "num_classes": 320, "val_split": "val"},
        "teacher": {"factory": model, "kwargs": {"layers": 1, "dim": 32, "heads": 2, "context": CTX}},
        "student": {"factory": model, "kwargs": {"layers": 1, "dim": 16, "heads": 2, "context": CTX}},
        "teacher_train": {"steps": 20, "batch_size": 8, "lr": 3e-3, "log_every": 10},
        "student_train": {"steps": 10, "batch_size": 8, "lr": 3e-3, "log_every": 5},
        "cache": {"top_k": 8, "temperatures": [1.0, 2.0], "chunk_rows": 2048, "batch_size": 256},
        "distill": {"alpha": 0.5, "temperature": 1.0},
        "sequence": {"context": CTX, "recon_tokens": 500, "eval_tokens": 1000},
    }
    return set_keys(cfg, over)


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm-run")
    p = write_config(d / "pipeline.yaml", lm_config(d / "run"))
    run_pipeline(load_config(p))
    return p


def test_corpus_splits_are_stable_and_exclude_tests():
    files = stdlib_files()
    rels = [r for r, _ in files]
    assert len(files) > 300 and not any(part in ("test", "tests", "idlelib") for r in rels for part in r.split("/")[:-1])
    splits = [split_of(r, 0.05, 0.05) for r in rels]
    assert splits == [split_of(r, 0.05, 0.05) for r in rels] and {"train", "val", "test"} == set(splits)


def test_lm_end_to_end(lm_run):
    cfg = load_config(lm_run)
    out = cfg.out_dir
    metrics = json.loads((out / "metrics.json").read_text())["models"]
    for name in ("teacher", "student", "baseline"):
        for split in ("val", "test"):
            s = metrics[name][split]
            assert 0 < s["cross_entropy"] < np.log(320) + 1 and 0 <= s["accuracy"] <= 1 and s["rows"] > 500
        assert metrics[name]["parameters"] > 0 and metrics[name]["bytes_on_disk"] > 0
    assert metrics["teacher"]["val"]["agreement_with_teacher"] == 1.0
    assert metrics["teacher"]["parameters"] > metrics["student"]["parameters"]
    # against the teacher's stored test-split targets (store_eval.py): labels = next tokens within each window
    fs = json.loads((out / "metrics.json").read_text())["from_store"]
    assert fs["split"] == "test" and 500 < fs["labelled_rows"] < fs["rows"]  # a window's last token has no label
    assert abs(fs["teacher"]["accuracy"] - metrics["teacher"]["test"]["accuracy"]) < 0.05  # same teacher, ~same tokens
    for name in ("student", "baseline"):
        v = fs["models"][name]
        assert 0 <= v["agreement_with_teacher"] <= 1 and v["kl_to_teacher"][f"{cfg.cache.temperatures[0]:g}"] > 0
    store = open_store(cfg.cache_path)
    m = store.manifest
    assert m.kind == "sequence" and m.num_classes == 320 and m.values_scheme == "relative"
    assert m.reconstruction_kl.rows >= 500 and 0 <= m.reconstruction_kl.compression < m.reconstruction_kl.full
    # every train and test token is a row (test rows after the train rows), samples keep their own lengths
    tokens = 0
    for split in ("train", "test"):
        ids = np.load(out / "data" / "tokens" / f"{split}.ids.npy")
        tokens += len(ids) - int((np.diff(np.load(out / "data" / "tokens" / f"{split}.offsets.npy")) % CTX == 1).sum())
    assert m.num_rows == tokens and m.dataset.eval_split == "test"
    n = store.samples.table()["num_rows"].to_numpy()
    assert n.max() == CTX and n.min() < CTX
    assert "reconstruction KL" in CliRunner().invoke(app, ["inspect", str(cfg.cache_path)]).output


def test_student_trains_from_the_store_alone(lm_run, tmp_path):
    cfg = load_config(lm_run)
    run = tmp_path / "alone"
    shutil.copytree(cfg.cache_path, run / "cache")  # the store only: no tokens, tokenizer or teacher
    over = {"teacher.factory": "kd_pipeline.no_such_module:teacher", "data.factory": "kd_pipeline.no_such:corpus"}
    c = lm_config(run, **over)
    # a config whose teacher and corpus cannot even be imported would not load: bypass load_config
    from kd_pipeline.config import PipelineConfig

    pc = PipelineConfig.model_validate(c)
    ran = run_pipeline(pc, only=["train_student"])
    assert ran == ["train_student"] and (run / "student.safetensors").is_file()
    assert not (run / "data").exists() and not (run / "teacher.safetensors").exists()


def test_sampled_8bit_targets_train(lm_run, tmp_path):
    cfg = load_config(lm_run)
    run = tmp_path / "sampled"
    shutil.copytree(cfg.out_dir / "data", run / "data")
    shutil.copy(cfg.out_dir / "teacher.safetensors", run / "teacher.safetensors")
    c = load_config(write_config(tmp_path / "p.yaml", lm_config(run, **{"cache.targets": "sampled", "cache.draws": 12,
                                                                           "cache.values_dtype": "uint8"})))
    run_pipeline(c, only=["cache_teacher", "train_student"])
    m = open_store(c.cache_path).manifest
    assert m.targets == "sampled" and m.values_scheme == "q8" and m.top_k == 12 and m.sample_draws == 12
    assert m.reconstruction_kl.compression < 1e-2
    curve = [json.loads(x) for x in (run / "logs" / "train_student.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in curve)


def test_hf_tiny_gpt2_as_teacher_and_student(lm_run, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers not installed: pip install -e '.[hf]'")
    cfg = load_config(lm_run)
    tiny = transformers.GPT2Config(vocab_size=320, n_positions=CTX, n_embd=16, n_layer=1, n_head=2)
    transformers.GPT2LMHeadModel(tiny).save_pretrained(tmp_path / "gpt2")
    run = tmp_path / "hf"
    shutil.copytree(cfg.out_dir / "data", run / "data")
    hf = {"factory": "kd_pipeline.lm.hf:causal_lm", "kwargs": {"path": str(tmp_path / "gpt2")}}
    c = lm_config(run, teacher=hf, student=hf)
    del c["teacher_train"]  # used as loaded
    pc = load_config(write_config(tmp_path / "p.yaml", c))
    stages = ["train_teacher", "cache_teacher", "train_student", "train_baseline", "evaluate"]
    assert run_pipeline(pc, only=stages) == stages
    assert open_store(pc.cache_path).manifest.num_classes == 320 and (run / "student.safetensors").is_file()
    assert json.loads((run / "metrics.json").read_text())["models"]["student"]["test"]["rows"] > 0


def test_sampled_targets_refused_for_classification(tmp_path):
    from kd_pipeline.errors import ConfigError
    from tests.conftest import tiny_config

    p = write_config(tmp_path / "p.yaml", tiny_config(tmp_path / "run"))
    with pytest.raises(ConfigError, match="cache.targets: sequence stores only"):
        load_config(p, ["cache.targets=sampled"])


def test_killed_lm_student_resumes_bit_for_bit(zygote, lm_run, tmp_path):
    from safetensors.torch import load_file

    from tests.killing import kill9, start_paused

    src = load_config(lm_run)
    over = {"cache.path": str(src.cache_path), "student_train.steps": 12, "student_train.checkpoint_every": 4}
    ref = load_config(write_config(tmp_path / "ref.yaml", lm_config(tmp_path / "ref", **over)))
    run_pipeline(ref, only=["train_student"])  # never stopped
    y = write_config(tmp_path / "p.yaml", lm_config(tmp_path / "run", **over))
    cfg = load_config(y)
    ckpt = cfg.out_dir / ".kd" / "ckpt" / "train_student.safetensors"
    kill9(start_paused(zygote, y, "checkpoint:train_student:8", "train_student", tmp_path))
    assert ckpt.is_file() and not (cfg.out_dir / "student.safetensors").exists()
    assert run_pipeline(cfg, only=["train_student"]) == ["train_student"]
    got, want = load_file(str(cfg.out_dir / "student.safetensors")), load_file(str(ref.out_dir / "student.safetensors"))
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].numpy().tobytes() == want[k].numpy().tobytes(), k
    assert not ckpt.exists()
