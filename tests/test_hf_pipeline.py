"""Hugging Face end to end, offline (issue 10.1): a local tokenizer folder, a corpus read by `datasets` from
JSON lines, a tiny HF Llama teacher with a padded head (cut to the tokenizer's ids) and a tiny HF GPT-2
student through every stage; chat data whose loss falls on assistant tokens only (checked by gradients)."""

import json

import numpy as np
import pytest
import torch

from kd_pipeline.config import load_config
from kd_pipeline.errors import ConfigError, DataError
from kd_pipeline.runner import run_pipeline
from kd_pipeline.store import open_store
from tests.conftest import set_keys, write_config

transformers = pytest.importorskip("transformers", reason="the hf extra: pip install -e '.[hf]'")
pytest.importorskip("datasets", reason="the hf extra: pip install -e '.[hf]'")

CTX = 32
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from kd_pipeline.lm.assets import make_assets

    d = tmp_path_factory.mktemp("hf-assets")
    info = make_assets(d, vocab=600, small_vocab=400, max_bytes=40_000, text_bytes=40_000, chats=40, context=64, teacher_size=(2, 32), student_size=(1, 16))
    return d, info


def hf_config(out, assets, **over) -> dict:
    d, info = assets
    cfg = {
        "out": str(out),
        "kind": "sequence",
        "data": {"factory": "kd_pipeline.lm.corpus:hf_files", "kwargs": {"files": {s: str(d / "text" / f"{s}.jsonl") for s in SPLITS}},
                 "num_classes": info["vocab"], "val_split": "val"},
        "teacher": {"factory": "kd_pipeline.lm.hf:causal_lm", "kwargs": {"path": str(d / "teacher")}},
        "student": {"factory": "kd_pipeline.lm.hf:causal_lm", "kwargs": {"path": str(d / "student")}},
        "teacher_train": {"steps": 4, "batch_size": 4, "lr": 3e-3, "log_every": 2},
        "student_train": {"steps": 4, "batch_size": 4, "lr": 3e-3, "log_every": 2},
        "cache": {"top_k": 8, "temperatures": [1.0], "chunk_rows": 1024, "batch_size": 256},
        "distill": {"alpha": 0.5, "temperature": 1.0},
        "sequence": {"context": CTX, "recon_tokens": 200, "eval_tokens": 400, "tokenizer": str(d / "tokenizer"),
                     "teacher_outputs": info["teacher_outputs"]},
        "evaluate": {"latency_runs": 3, "batch_size": 256},
    }
    return set_keys(cfg, over)


def test_hf_pipeline_end_to_end_offline(assets, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d, info = assets
    cfg = load_config(write_config(tmp_path / "p.yaml", hf_config(tmp_path / "run", assets)))
    assert run_pipeline(cfg) == ["prepare_data", "train_teacher", "cache_teacher", "train_student", "train_baseline", "evaluate"]
    assert run_pipeline(cfg) == []  # nothing changed: every stage is fresh (no tokenizer.json is written for an HF one)
    m = open_store(cfg.cache_path).manifest
    assert m.num_classes == info["vocab"] and m.teacher.outputs == info["teacher_outputs"] > info["vocab"]
    assert m.char_offsets and not m.loss_mask
    from typer.testing import CliRunner

    from kd_pipeline.cli import app

    assert f"teacher head padded: {info['teacher_outputs']} outputs, cut to the first {info['vocab']}" in CliRunner().invoke(app, ["inspect", str(cfg.cache_path)]).output
    metrics = json.loads((cfg.out_dir / "metrics.json").read_text())["models"]
    for name in ("teacher", "student", "baseline"):
        s = metrics[name]["test"]
        assert s["rows"] > 300 and 0 < s["cross_entropy"] < np.log(info["vocab"]) + 2 and s["nats_per_char"] > 0
    # the store's first sample is the first train document as the HF tokenizer reads it, EOS first
    store = open_store(cfg.cache_path)
    first = store.samples.block(0, 1)
    tokens = store.arrays["tokens"][: int(first["num_rows"][0])]
    ends = store.arrays["char_end"][: len(tokens)]
    tok = transformers.AutoTokenizer.from_pretrained(str(d / "tokenizer"), local_files_only=True)
    doc = json.loads((d / "text" / "train.jsonl").read_text().splitlines()[0])["text"]
    assert tokens[0] == tok.eos_token_id and ends[0] == 0
    assert tok.decode(tokens[1:]) == doc[: int(ends[-1])]


def test_hf_files_reads_parquet_and_text(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kd_pipeline.lm.corpus import hf_files

    pq.write_table(pa.table({"body": ["first doc", "second doc"]}), tmp_path / "a.parquet")
    (tmp_path / "b.txt").write_text("one file\nis one document\n")
    assert list(hf_files("train", {"train": str(tmp_path / "a.parquet")}, field="body")) == ["first doc", "second doc"]
    assert list(hf_files("train", {"train": [str(tmp_path / "b.txt")]})) == ["one file\nis one document\n"]
    with pytest.raises(DataError, match="no field 'text'"):
        list(hf_files("train", {"train": str(tmp_path / "a.parquet")}))
    with pytest.raises(DataError, match="no files for split 'val'"):
        hf_files("val", {"train": str(tmp_path / "b.txt")})


# ------------------------------------------------------------------------------------------- padded head


def test_padded_teacher_head_is_cut_and_a_wrong_width_refused(tmp_path):
    from kd_pipeline.config import Component
    from kd_pipeline.kinds import kind_for
    from kd_pipeline.models import build_model, check_output

    comp = Component(factory="kd_pipeline.lm.model:transformer_lm", kwargs={"layers": 1, "dim": 16, "heads": 2, "context": 16})
    torch.manual_seed(0)
    cut = build_model(comp, 320, "teacher", outputs=330)
    x = torch.randint(0, 320, (2, 8))
    full = cut.__class__.forward(cut, x)  # the module's own forward, without the hook
    assert full.shape[-1] == 330 and torch.equal(cut(x), full[..., :320])
    batch = kind_for("sequence", 320).collate([np.arange(8), np.arange(5)])
    check_output(cut, batch, kind_for("sequence", 320), 320, "teacher")
    torch.manual_seed(0)
    padded = build_model(comp, 330, "teacher")
    with pytest.raises(ConfigError, match="330 logits per row, data.num_classes is 320; a padded head\\? set sequence.teacher_outputs: 330"):
        check_output(padded, batch, kind_for("sequence", 320), 320, "teacher")
    with pytest.raises(ConfigError, match="330 logits per row, data.num_classes is 320$"):  # a student: no cut
        check_output(padded, batch, kind_for("sequence", 320), 320, "student")


def test_teacher_outputs_must_exceed_the_vocabulary(assets, tmp_path):
    p = write_config(tmp_path / "p.yaml", hf_config(tmp_path / "run", assets))
    with pytest.raises(ConfigError, match="sequence.teacher_outputs: must exceed data.num_classes"):
        load_config(p, ["sequence.teacher_outputs=600"])


def test_hf_teacher_without_the_cut_is_refused(assets, tmp_path):
    from kd_pipeline.checkpoint import load_teacher

    cfg = load_config(write_config(tmp_path / "p.yaml", hf_config(tmp_path / "run", assets)), ["sequence.teacher_outputs=null"])
    with pytest.raises(ConfigError, match="model has 640 output logits, data.num_classes is 600 .*sequence.teacher_outputs: 640"):
        load_teacher(cfg)


# ------------------------------------------------------------------------------------------------- chat


def chat_config(out, assets, **over) -> dict:
    d, info = assets
    model = "kd_pipeline.lm.model:transformer_lm"
    c = hf_config(out, assets, **{
        "data.kwargs": {"files": {s: str(d / "chat" / f"{s}.jsonl") for s in SPLITS}, "field": "messages"},
        "teacher": {"factory": model, "kwargs": {"layers": 1, "dim": 32, "heads": 2, "context": CTX}},
        "student": {"factory": model, "kwargs": {"layers": 1, "dim": 16, "heads": 2, "context": CTX}},
        "sequence.teacher_outputs": None,
        **over,
    })
    del c["teacher_train"]  # used as built: the loss mask is what is tested
    return c


@pytest.fixture(scope="module")
def chat_run(assets, tmp_path_factory):
    d = tmp_path_factory.mktemp("chat")
    cfg = load_config(write_config(d / "p.yaml", chat_config(d / "run", assets)))
    run_pipeline(cfg, only=["prepare_data", "cache_teacher"])
    return cfg


def test_chat_loss_mask_covers_exactly_the_assistant_turns(assets, chat_run):
    d, _ = assets
    tok = transformers.AutoTokenizer.from_pretrained(str(d / "tokenizer"), local_files_only=True)
    folder = chat_run.out_dir / "data" / "tokens"
    ids, offsets, loss = (np.load(folder / f"train.{s}.npy") for s in ("ids", "offsets", "loss"))
    convs = [json.loads(x)["messages"] for x in (d / "chat" / "train.jsonl").read_text().splitlines()]
    assert len(offsets) - 1 == len(convs)
    for c, a, b in zip(convs, offsets[:-1], offsets[1:]):
        doc, lm = ids[a:b], loss[a:b]
        assert lm[-1] == 0 and tok.decode(doc) == tok.apply_chat_template(c, tokenize=False)
        trained = doc[1:][lm[:-1] == 1]  # the tokens that predictions with loss predict
        assert tok.decode(trained) == c[2]["content"] + "<|im_end|>\n"
    m = open_store(chat_run.cache_path).manifest
    assert m.loss_mask and m.char_offsets


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_chat_rows_outside_assistant_turns_get_no_gradient(chat_run, alpha):
    from kd_pipeline.config import DistillConfig
    from kd_pipeline.kinds import kind_for
    from kd_pipeline.models import build_model
    from kd_pipeline.objectives import CachedKD, HardLabels
    from kd_pipeline.stream import student_batches

    store = open_store(chat_run.cache_path)
    batch = next(student_batches(store, None, 6, 4, seed=0))
    keep = batch["loss_mask"][batch["mask"]]
    assert 0 < int(keep.sum()) < len(keep)  # the batch holds both kinds of rows
    kind = kind_for("sequence", chat_run.data.num_classes)
    torch.manual_seed(0)
    student = build_model(chat_run.student, chat_run.data.num_classes, "student")
    grabbed = {}

    def grab(module, args, out):
        out.retain_grad()
        grabbed["out"] = out

    student.register_forward_hook(grab)
    modules = [CachedKD(student, kind, DistillConfig(alpha=alpha, temperature=1.0), {})]
    if alpha == 1.0:
        modules.append(HardLabels(student, kind))
    for module in modules:
        loss, _ = module(batch)
        loss.backward()
        g = grabbed["out"].grad[batch["mask"]].abs().sum(dim=1)  # (n,) gradient reaching each row's logits
        # rows with loss: all of them through KD; through CE alone, those with a label inside the window
        trained = keep if alpha < 1 else keep & (kind.row_labels(batch) >= 0)
        assert float(g[~keep].max()) == 0.0 and bool((g[trained] > 0).all())
        student.zero_grad()


def test_conversations_need_a_chat_template(assets, tmp_path):
    cfg = load_config(write_config(tmp_path / "p.yaml", chat_config(tmp_path / "run", assets, **{"sequence.tokenizer": None})))
    with pytest.raises(DataError, match="conversations need sequence.tokenizer"):
        run_pipeline(cfg, only=["prepare_data"])


def test_reader_refuses_bad_offsets_and_loss_mask(chat_run):
    from kd_pipeline.errors import StoreError

    store = open_store(chat_run.cache_path)
    block = store.read_block(0)
    store.check_block(0, block)
    for name, value, msg in (("char_end", -1, "char_end row 7: negative offset"), ("loss_mask", 2, "loss_mask row 7: not 0 or 1")):
        bad = dict(block, **{name: block[name].copy()})
        bad[name][7] = value
        with pytest.raises(StoreError, match=msg):
            store.check_block(0, bad)
