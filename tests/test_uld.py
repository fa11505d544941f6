"""Cross-tokenizer distillation (issue 10.4): the ULD loss against hand-computed values and the dense sorted-L1
formula, the character-offset alignment, and an end-to-end run with two BPE tokenizers of different vocabulary
sizes trained on the same corpus, compared per character with the hard-label student."""

import json
import math

import pytest
import torch

from kd_pipeline.config import load_config
from kd_pipeline.errors import StoreError
from kd_pipeline.runner import run_pipeline
from kd_pipeline.targets import Targets, full_targets, topk_targets
from kd_pipeline.uld import align, uld_distance
from tests.conftest import write_config


def targets_of(probs: list[float], vocab: int) -> Targets:
    """Top-k targets holding exactly `probs` (descending) of a `vocab`-id teacher, values relative to the top."""
    p = torch.tensor([probs], dtype=torch.float64)
    return Targets(values=(p.log() - p[:, :1].log()).float(), indices=torch.arange(len(probs))[None], lse=-p[:, :1].log().float(),
                   temperatures=(1.0,), num_classes=vocab)


def test_uld_matches_a_hand_computed_value():
    # teacher: top-2 of 5 ids = 0.5, 0.3, tail 0.2; student (4 ids, unsorted) = 0.1, 0.6, 0.05, 0.25
    # sorted: 0.6, 0.25, tail 0.15 -> |0.5-0.6| + |0.3-0.25| + |0.2-0.15| = 0.2
    s = torch.tensor([[0.1, 0.6, 0.05, 0.25]]).log()
    assert uld_distance(s, targets_of([0.5, 0.3], 5), 1.0).item() == pytest.approx(0.2, abs=1e-6)
    # a student vocabulary (2) smaller than k (3): its sorted vector is padded with zeros
    # |0.5-0.7| + |0.3-0.3| + |0.2-0| + |tail 0 - tail 0| = 0.4
    assert uld_distance(torch.tensor([[0.3, 0.7]]).log(), targets_of([0.5, 0.3, 0.2], 3), 1.0).item() == pytest.approx(0.4, abs=1e-6)


def dense_uld(s: torch.Tensor, t: torch.Tensor, tau: float) -> torch.Tensor:
    """The paper's formula: L1 between the sorted probability vectors, the shorter padded with zeros."""
    p = torch.softmax(t.double() / tau, 1).sort(1, descending=True).values
    q = torch.softmax(s.double() / tau, 1).sort(1, descending=True).values
    n = max(p.shape[1], q.shape[1])
    return (torch.nn.functional.pad(p, (0, n - p.shape[1])) - torch.nn.functional.pad(q, (0, n - q.shape[1]))).abs().sum(1)


@pytest.mark.parametrize("student_vocab", [5, 11])
def test_uld_with_every_id_stored_equals_the_dense_formula_and_top_k_bounds_it(student_vocab):
    g = torch.Generator().manual_seed(0)
    t = torch.randn(64, 7, generator=g) * 3
    s = torch.randn(64, student_vocab, generator=g) * 3
    for tau in (1.0, 2.0):
        exact = dense_uld(s, t, tau)
        got = uld_distance(s, full_targets(t, (1.0, 2.0)), tau)
        assert torch.allclose(got.double(), exact, atol=1e-5)
        low = uld_distance(s, topk_targets(t, 3, (1.0, 2.0)), tau)  # one tail bucket: never above the full distance
        assert bool((low.double() <= exact + 1e-6).all()) and float((exact - low.double()).max()) > 1e-3


def test_uld_gradient_reaches_the_student():
    s = torch.randn(4, 9, requires_grad=True)
    uld_distance(s, topk_targets(torch.randn(4, 6), 3, (1.0,)), 1.0).sum().backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0


def test_alignment_pairs_rows_that_end_at_the_same_character():
    # sample 0: teacher tokens end at 0, 3, 5, 5 (a character split over two byte tokens), 9; student at 0, 2, 3, 6, 9
    # sample 1: teacher 0, 4 (+ padding), student 0, 1, 4 (+ padding)
    t_chars = torch.tensor([[0, 3, 5, 5, 9], [0, 4, 0, 0, 0]])
    t_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    s_chars = torch.tensor([[0, 2, 3, 6, 9], [0, 1, 4, 0, 0]])
    s_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    ti, si = align(t_chars, t_mask, s_chars, s_mask)
    # rows in mask order: teacher 0..4 then 5, 6; student 0..4 then 5, 6, 7
    assert sorted(zip(ti.tolist(), si.tolist())) == [(0, 0), (1, 2), (4, 4), (5, 5), (6, 7)]
    keep = t_mask.clone()
    keep[0, 1] = False  # a row without loss (a conversation's user turn) is never paired
    ti, si = align(t_chars, t_mask, s_chars, s_mask, keep)
    assert sorted(zip(ti.tolist(), si.tolist())) == [(0, 0), (4, 4), (5, 5), (6, 7)]


# ------------------------------------------------------------------------------------------ end to end


def test_cross_tokenizer_end_to_end(tmp_path, capsys):
    pytest.importorskip("transformers", reason="the hf extra: pip install -e '.[hf]'")
    from kd_pipeline.lm.assets import save_tokenizer
    from kd_pipeline.lm.corpus import stdlib_corpus

    corpus = {"max_bytes": 40_000}
    small = save_tokenizer(stdlib_corpus("train", **corpus), 400, tmp_path / "student-tok")  # same corpus, fewer ids
    model = "kd_pipeline.lm.model:transformer_lm"
    c = {
        "out": str(tmp_path / "run"),
        "kind": "sequence",
        "data": {"factory": "kd_pipeline.lm.corpus:stdlib_corpus", "kwargs": corpus, "num_classes": 600, "val_split": "val"},
        "teacher": {"factory": model, "kwargs": {"layers": 1, "dim": 32, "heads": 2, "context": 32}},
        "student": {"factory": model, "kwargs": {"layers": 1, "dim": 16, "heads": 2, "context": 48}},
        "teacher_train": {"steps": 30, "batch_size": 8, "lr": 3e-3, "log_every": 10},
        "student_train": {"steps": 10, "batch_size": 8, "lr": 3e-3, "log_every": 5},
        "cache": {"top_k": 16, "temperatures": [1.0], "chunk_rows": 2048, "batch_size": 256},
        "distill": {"alpha": 0.5, "temperature": 1.0},
        "sequence": {"context": 32, "recon_tokens": 0, "eval_tokens": 1000,
                     "student_tokenizer": {"path": str(tmp_path / "student-tok"), "num_classes": small, "context": 48}},
        "evaluate": {"latency_runs": 3, "batch_size": 512},
    }
    cfg = load_config(write_config(tmp_path / "p.yaml", c))
    assert len(run_pipeline(cfg)) == 6
    metrics = json.loads((cfg.out_dir / "metrics.json").read_text())["models"]
    for name in ("teacher", "student", "baseline"):
        r = metrics[name]["test"]
        assert r["chars"] > 1500 and 0 < r["nats_per_char"] < 6 and math.isclose(r["char_perplexity"], math.exp(r["nats_per_char"]))
    assert metrics["student"]["test"]["agreement_with_teacher"] is None and metrics["teacher"]["test"]["agreement_with_teacher"] == 1.0
    # the two students read the same texts (whole documents) with their own tokens: the same characters
    assert metrics["student"]["test"]["chars"] == metrics["baseline"]["test"]["chars"]
    # the summary and the report rank the models per character: per-token perplexities of two tokenizers do not compare
    from kd_pipeline.summary import summary_rows

    rows = dict(summary_rows(cfg, [{"stage": "evaluate", "status": "ran", "seconds": 1.0}]))
    assert rows["KD student"].startswith(f"{metrics['student']['test']['nats_per_char']:.3f} nats/char on test"), rows
    assert rows["KD gain"].endswith("nats/char (KD student − baseline, lower is better)"), rows
    assert "nats/char" in (cfg.out_dir / "report.md").read_text()
    curve = [json.loads(x) for x in (cfg.out_dir / "logs" / "train_student.jsonl").read_text().splitlines()]
    assert all(0.5 < r["aligned"] <= 1 and r["uld"] > 0 for r in curve)  # most teacher rows find a partner
    assert (cfg.out_dir / "data" / "student_tokens" / "train.ids.npy").is_file()
    # the benchmark over seeds runs on this run folder (its figures are in docs/benchmarks.md, not checked here)
    from bench.uld_quality import main

    main(str(tmp_path / "p.yaml"), [0], ["student_train.steps=2"])
    assert [json.loads(x)["model"] for x in capsys.readouterr().out.splitlines() if x.startswith("{")] == ["uld", "ce_aligned", "hard"]
    # the store's char_end only means something for the text it was made from: other text is refused
    with pytest.raises(StoreError, match="made for other data"):
        run_pipeline(load_config(tmp_path / "p.yaml", ["data.kwargs.max_bytes=100000"]), only=["train_student"], force=True)
