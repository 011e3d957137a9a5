"""Wall-clock timing of a callable for benchmarks: one warm-up, then `repeats` timed runs (CUDA synchronised)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def timed_runs(fn: Callable[[], object], repeats: int, device: torch.device) -> list[float]:
    """Seconds of each of `repeats` calls of `fn` after one untimed warm-up call; on CUDA the device is
    synchronised before and after each call, so queued kernels are counted."""
    fn()
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - t0)
    return seconds
