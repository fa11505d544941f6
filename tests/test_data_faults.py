"""Faults in the user's own data and model code: each is one line naming split and sample (or the factory),
exit 2, found before anything trains (prepare_data) or, for the teacher's own output, before the block is
written; a store with a non-finite teacher output is never complete."""

import json

import pytest
import zarr
from typer.testing import CliRunner

from kd_pipeline.cli import app
from tests.conftest import tiny_config, write_config

runner = CliRunner()


def kd_run(tmp_path, over: dict, *stages):
    if "data.factory" in over:
        over = {**over, "data.kwargs": {}}  # tests/faulty.py fixes the data's size
    y = write_config(tmp_path / "p.yaml", tiny_config(tmp_path / "run", **over))
    args = ["run", str(y)] + [a for s in stages for a in ("--stage", s)]
    return runner.invoke(app, args)


def one_line(r, *fragments):
    lines = [x for x in r.output.splitlines() if x.startswith("error: ")]
    assert r.exit_code == 2 and len(lines) == 1, r.output
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


CASES = {
    # name: (config overrides, fragments the one line must hold)
    "an input of another shape": ({"data.factory": "tests.faulty:ragged"},
                                  ["split 'transfer' sample 57", "input (39,)", "differs from (40,)"]),
    "a label equal to num_classes": ({"data.factory": "tests.faulty:label_out_of_range"},
                                     ["split 'train' sample 123", "label 10 outside 0..9"]),
    "a NaN float label": ({"data.factory": "tests.faulty:nan_labels"}, ["split 'train' sample 31", "label nan is not an integer"]),
    "a labelled split with no label": ({"data.factory": "tests.faulty:unlabelled_train"},
                                       ["split 'train' has no labelled sample"]),
    "an empty split": ({"data.factory": "tests.faulty:empty_transfer"}, ["split 'transfer' is empty"]),
    "NaN in an input": ({"data.factory": "tests.faulty:nan_inputs"}, ["split 'transfer' sample 640", "NaN or infinite"]),
    "a dataset factory that raises": ({"data.factory": "tests.faulty:raising"},
                                      ["data.factory: tests.faulty:raising raised RuntimeError: cannot open /data/images"]),
    "a dataset item that raises": ({"data.factory": "tests.faulty:raising_item"},
                                   ["split 'train' sample 77", "reading it raised OSError: corrupt file train/00077.png"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_data_fault_is_found_before_anything_trains(case, tmp_path):
    over, fragments = CASES[case]
    line = one_line(kd_run(tmp_path, over), *fragments)
    assert "unexpected" not in line
    assert not (tmp_path / "run" / "teacher.safetensors").exists()  # prepare_data refused first


@pytest.mark.parametrize("factory,fragments", [
    ("tests.faulty:raising_model", ["teacher.factory: tests.faulty:raising_model raised ValueError: unknown depth 51"]),
])
def test_a_model_factory_that_raises_is_named(factory, fragments, tmp_path):
    one_line(kd_run(tmp_path, {"teacher.factory": factory, "teacher.kwargs": {}}), *fragments)


@pytest.mark.parametrize("factory,width", [("tests.faulty:wide_student", 14), ("tests.faulty:narrow_student", 9)])
def test_a_student_of_the_wrong_width_is_refused_before_it_trains(tiny_run, factory, width, tmp_path):
    from kd_pipeline.config import load_config

    over = {"cache.path": str(load_config(tiny_run).cache_path), "student.factory": factory, "student.kwargs": {}}
    one_line(kd_run(tmp_path, over, "train_student"), "student: the model's output has shape", f"{width} logits per row, data.num_classes is 10")
    assert not (tmp_path / "run" / "student.safetensors").exists()


def test_a_non_finite_teacher_output_is_refused_before_its_block_is_written(tmp_path):
    over = {"teacher.factory": "tests.faulty:exploding_teacher", "teacher.kwargs": {}, "cache.features": {}}
    line = one_line(kd_run(tmp_path, over), "cache_teacher: the teacher's output for split", "is not finite", "was not written")
    assert "sample" in line
    store = tmp_path / "run" / "cache"
    assert not zarr.open_group(str(store), mode="r").attrs["kd_cache"]["complete"]
    assert not (tmp_path / "run" / ".kd" / "stamps" / "cache_teacher.json").exists()
    assert one_line(kd_run(tmp_path, over), "is not finite") == line  # a rerun says the same, never completes
    r = runner.invoke(app, ["verify", str(store)])
    assert r.exit_code == 2 and "incomplete" in r.output
