"""`threads` (config): torch's intra-op threads for the run, applied by run_pipeline; not a stage parameter."""

import torch

from kd_pipeline.config import load_config
from kd_pipeline.runner import run_pipeline


def test_threads_is_applied_and_reruns_nothing(tiny_run):
    before = torch.get_num_threads()
    try:
        assert load_config(tiny_run).threads == 1  # the declared default
        assert run_pipeline(load_config(tiny_run, ["threads=3"])) == []  # every stage still up to date
        assert torch.get_num_threads() == 3
        assert run_pipeline(load_config(tiny_run, ["threads=0"])) == []  # 0: left as it is
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
