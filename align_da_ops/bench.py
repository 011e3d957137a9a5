"""Benchmarks (`align-da bench …`): measured side by side in one run, reported with ratios."""

from __future__ import annotations

import time

import torch

from align_da_ops.data.dycore import CoreSpec, HeldSuarezCore

# Time steps that keep each resolution stable (minutes).
DEFAULT_DT = {21: 60.0, 42: 20.0, 85: 10.0}
DEFAULT_LAYERS = {21: 8, 42: 12, 85: 20}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_nature_run(
    truncations: tuple[int, ...], devices: tuple[str, ...], hours: float = 24.0, members: tuple[int, ...] = (1,),
    repeats: int = 3,
) -> list[dict]:
    """Seconds per simulated 6 h for each (device, truncation, trajectories in one batch); best of `repeats`
    after a warm-up."""
    rows = []
    for device_name, trunc, batch in ((d, t, m) for d in devices for t in truncations for m in members):
        device = torch.device(device_name)
        core = HeldSuarezCore(CoreSpec(trunc, DEFAULT_LAYERS[trunc]), DEFAULT_DT[trunc], device=device)
        state = core.rest_state(seed=0, members=batch)
        steps = core.steps_for_hours(hours)
        state = core.advance(state, core.steps_for_hours(6))  # warm-up
        _sync(device)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            state = core.advance(state, steps)
            _sync(device)
            best = min(best, time.perf_counter() - t0)
        nx, ny = core.coords.horizontal.nodal_shape
        rows.append({
            "device": device_name, "grid": f"T{trunc} L{DEFAULT_LAYERS[trunc]} ({ny}x{nx})", "dt_min": DEFAULT_DT[trunc],
            "members": batch, "s_per_6h": best / (hours / 6.0), "s_per_6h_per_member": best / (hours / 6.0) / batch,
        })
    base = rows[0]["s_per_6h_per_member"] if rows else 1.0
    for row in rows:
        row["ratio_to_first"] = row["s_per_6h_per_member"] / base
    return rows
