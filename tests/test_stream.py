"""The student's stream: every training sample once per pass in full batches, blocks shuffled, labelled rows
spread over every batch, evaluation rows never streamed, ranks drawing disjoint shares."""

import numpy as np
import torch

from kd_pipeline.config import load_config
from kd_pipeline.prepare import open_samples
from kd_pipeline.store import open_store
from kd_pipeline.stream import BlockStream, student_batches
from tests.test_store import manifest, write_store


def test_each_pass_sees_every_row_once_in_full_batches(tmp_path):
    m = manifest(num_rows=1000, chunk_rows=64)
    write_store(tmp_path / "s", m, torch.randn(1000, 10))
    store = open_store(tmp_path / "s")
    it = iter(BlockStream(store, batch_size=50, window=3, seed=1))
    got = [next(it) for _ in range(20)]  # 20 x 50 = one pass
    rows = np.concatenate([_rows(store, u) for _, u in got])
    assert sorted(rows.tolist()) == list(range(1000))
    r, u = next(it)
    assert len(u["split"]) == 50 and set(r) >= {"values", "ids", "lse"}  # ids and values decoded once per block
    # rows carry their own targets
    row = int(_rows(store, u)[0])
    direct = store.read_block(row // 64)
    assert np.array_equal(r["values"][0], direct["topk_logits"][row % 64].astype(np.float32))


def test_the_stream_thread_stops_with_its_consumer_and_hands_on_errors(tmp_path):
    """Windows are shuffled and gathered in a background thread (stream.in_thread): closing the consumer ends
    it, and a corrupt block read there is raised in the consumer, by name."""
    import threading
    import time

    import pytest

    from kd_pipeline.errors import StoreError

    m = manifest(num_rows=1000, chunk_rows=64)
    write_store(tmp_path / "s", m, torch.randn(1000, 10))
    store = open_store(tmp_path / "s")
    it = iter(BlockStream(store, batch_size=50, window=3, seed=1))
    next(it)
    assert any(t.name == "kd-stream" for t in threading.enumerate())
    it.close()
    deadline = time.monotonic() + 5
    while any(t.name == "kd-stream" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "kd-stream" for t in threading.enumerate())
    lse = tmp_path / "s" / "lse" / "c" / "5" / "0"
    lse.write_bytes(bytes(b ^ 0xFF for b in lse.read_bytes()))  # every block is in the first pass's windows
    with pytest.raises(StoreError, match="array lse block 5 .*sha256|lse row"):
        for _ in BlockStream(open_store(tmp_path / "s"), batch_size=50, window=3, seed=1):
            pass


def _rows(store, units):
    """Store rows of a classification batch: sample ids are rows within each split, splits back to back."""
    sizes = store.manifest.dataset.split_sizes
    offset = np.cumsum([0, *[sizes[s] for s in store.manifest.dataset.splits]])[:-1]
    return offset[units["split"]] + units["sample_id"]


def test_order_is_shuffled_across_blocks(tmp_path):
    m = manifest(num_rows=1024, chunk_rows=64)
    write_store(tmp_path / "s", m, torch.randn(1024, 10))
    _, u = next(iter(BlockStream(open_store(tmp_path / "s"), batch_size=64, window=4, seed=0)))
    first = _rows(open_store(tmp_path / "s"), u)
    assert len(np.unique(first // 64)) > 1  # a batch mixes blocks of its window
    assert not np.array_equal(np.sort(first), np.arange(64))


def test_labelled_rows_in_every_batch_and_no_evaluation_row(tiny_run):
    cfg = load_config(tiny_run)
    store = open_store(cfg.cache_path)
    m = store.manifest
    assert m.row_order == "interleaved" and m.dataset.eval_split == "test"
    test = m.dataset.splits.index("test")
    batches = student_batches(store, open_samples(cfg, m.dataset.splits), 50, cfg.distill.shuffle_window, 0)
    seen = []
    for _ in range(64):  # two passes over the 1600 training samples
        b = next(batches)
        assert (b["split"] != test).all()
        assert (b["y"] >= 0).sum() >= 3  # 400 of 1600 rows are labelled: ~12 per batch of 50, never none
        seen.append(list(zip(b["split"].tolist(), b["sample_id"].tolist())))
    first_pass = [k for batch in seen[:32] for k in batch]
    assert len(set(first_pass)) == 1600


def test_ranks_draw_disjoint_blocks(tiny_run):
    store = open_store(load_config(tiny_run).cache_path)
    keys = []
    for rank in (0, 1):  # within one pass (each rank has >= 3 of the 7 training blocks: >= 500 samples)
        it = iter(BlockStream(store, batch_size=25, window=2, seed=4, rank=rank, world=2))
        units = [next(it)[1] for _ in range(20)]
        keys.append({(s, i) for u in units for s, i in zip(u["split"].tolist(), u["sample_id"].tolist())})
    assert len(keys[0]) == len(keys[1]) == 500 and not keys[0] & keys[1]


def test_the_students_fast_path_gives_the_same_batches(tiny_run):
    """Inputs gathered per window (in-memory data, no DataLoader), unused features not read, and the KL's
    teacher terms made per block: the same samples, inputs, targets and loss as the general path."""
    from kd_pipeline.losses import sparse_kl
    from kd_pipeline.targets import Targets

    cfg = load_config(tiny_run)
    store = open_store(cfg.cache_path)
    samples = open_samples(cfg, store.manifest.dataset.splits)
    fast = student_batches(store, samples, 50, 4, seed=3, features=[], kl_tau=4.0)
    plain = student_batches(store, _NotInMemory(samples), 50, 4, seed=3)  # a DataLoader per batch, everything read
    student = torch.nn.Linear(40, 10)
    for _ in range(40):  # more than a pass
        a, b = next(fast), next(plain)
        assert np.array_equal(a["sample_id"], b["sample_id"]) and torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])
        ta, tb = a["targets"], b["targets"]
        assert ta.features == {} and set(tb.features) == {"penultimate"} and ta.kl_tau == 4.0 and tb.kl_p is None
        assert torch.equal(ta.values, tb.values) and torch.equal(ta.indices, tb.indices) and torch.equal(ta.lse, tb.lse)
        s = student(a["x"])
        assert torch.allclose(sparse_kl(s, ta, 4.0), sparse_kl(s, tb, 4.0), atol=1e-6)
        assert isinstance(ta, Targets)


class _NotInMemory:
    """The same samples behind an object the stream cannot gather from per window."""

    def __init__(self, samples):
        self.s = samples

    def __len__(self):
        return len(self.s)

    def __getitems__(self, keys):
        return self.s.__getitems__(keys)
