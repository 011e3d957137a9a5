"""Observation benchmarks: BUFR decode throughput and H throughput (CPU and CUDA side by side)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from align_da_ops.grid import ERA5_LEVELS, StateLayout, equiangular_latitudes, longitudes
from align_da_ops.obs.batch import ObsBatch
from align_da_ops.obs.operators import GridInterpolator

# The paper's 69 channels: z, t, q, u, v on 13 levels + u10, v10, t2m, msl.
PAPER_LAYOUT = StateLayout(
    ("geopotential", "temperature", "specific_humidity", "u_component_of_wind", "v_component_of_wind"),
    ("10m_u_component_of_wind", "10m_v_component_of_wind", "2m_temperature", "mean_sea_level_pressure"),
    ERA5_LEVELS,
)


def bench_decode(files: list[Path], repeats: int = 3) -> list[dict]:
    """Reports and observations per second for each file (best of `repeats`), plus a total row."""
    from align_da_ops.obs.bufr import decode_bufr_bytes  # ecCodes only when decoding is measured

    rows = []
    for path in files:
        data = Path(path).read_bytes()
        best, decoded = float("inf"), None
        for _ in range(repeats):
            t0 = time.perf_counter()
            decoded = decode_bufr_bytes(data, source=str(path))
            best = min(best, time.perf_counter() - t0)
        r = decoded.report
        rows.append(
            {
                "file": Path(path).name,
                "messages": r.messages,
                "reports": r.reports,
                "observations": r.observations,
                "seconds": best,
            }
        )
    total = {k: sum(r[k] for r in rows) for k in ("messages", "reports", "observations", "seconds")}
    rows.append({"file": "total", **total})
    for r in rows:
        r["reports_per_s"] = r["reports"] / r["seconds"] if r["seconds"] else float("nan")
        r["obs_per_s"] = r["observations"] / r["seconds"] if r["seconds"] else float("nan")
    return rows


def random_obs(n: int, layout: StateLayout, seed: int = 0) -> ObsBatch:
    """n observations anywhere on the sphere, variables drawn from the layout, pressures within its levels."""
    rng = np.random.default_rng(seed)
    names = np.asarray(layout.upper_air + layout.surface)
    variable = names[rng.integers(0, len(names), n)]
    surface = np.isin(variable, layout.surface)
    lo, hi = np.log(100.0 * min(layout.levels)), np.log(100.0 * max(layout.levels))
    pressure = np.where(surface, np.nan, np.exp(rng.uniform(lo, hi, n)))
    return ObsBatch.from_columns(
        latitude=np.degrees(np.arcsin(rng.uniform(-1, 1, n))),
        longitude=rng.uniform(0, 360, n),
        pressure=pressure,
        time=np.datetime64("2000-01-01T00:00:00", "s"),
        variable=variable,
        value=np.zeros(n),
        error=np.ones(n),
        obs_type="bench",
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best(fn, device, repeats: int) -> float:
    fn()  # warm-up
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def bench_operator(
    devices: tuple[str, ...], n_obs: int = 100_000, nlat: int = 128, nlon: int = 256, members: int = 1, repeats: int = 5
) -> list[dict]:
    """Seconds to prepare H for `n_obs`, apply it, and apply + backward, per device (float32 state)."""
    layout = PAPER_LAYOUT
    op = GridInterpolator(layout, equiangular_latitudes(nlat), longitudes(nlon))
    obs = random_obs(n_obs, layout)
    t0 = time.perf_counter()
    op.prepare(obs)
    prepare_s = time.perf_counter() - t0
    rows = []
    for name in devices:
        device = torch.device(name)
        prepared = op.prepare(obs, device)
        state = torch.randn((members, *op.state_shape), device=device, requires_grad=True)
        with torch.no_grad():
            apply_s = _best(lambda p=prepared, x=state: p(x), device, repeats)
        grad_s = _best(lambda p=prepared, x=state: p(x).sum().backward(), device, repeats)
        rows.append(
            {
                "device": name,
                "grid": f"{nlat}x{nlon}x{layout.n_channels}",
                "members": members,
                "n_obs": n_obs,
                "prepare_s": prepare_s,
                "apply_s": apply_s,
                "apply_backward_s": grad_s,
                "obs_per_s": n_obs * members / apply_s,
            }
        )
    for r in rows:
        r["speedup_vs_first"] = rows[0]["apply_s"] / r["apply_s"]
    return rows
