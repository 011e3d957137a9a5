"""The benchmarks' timer: one warm-up call, then one timed call per repeat."""

import torch

from align_da_ops.timing import timed_runs


def test_timed_runs_warm_up_once_then_time_each_repeat():
    calls = []
    seconds = timed_runs(lambda: calls.append(1), 4, torch.device("cpu"))
    assert len(calls) == 5 and len(seconds) == 4 and all(s >= 0 for s in seconds)
