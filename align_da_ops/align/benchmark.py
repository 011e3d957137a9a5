"""`align-da bench alignment`: the paper's Tables 1-2 on the OSSE's held-out (test) period.

Cases: every `every_hours` in the test split, the background is the neural
model's `lead_hours` forecast of the truth (the paper: 48-h FengWu forecasts);
observations: the paper's 1 % random mask, every channel, noise-free (their
default). For each prior (unaligned, -P, -M) and guidance (ObsFree, Repaint,
DPS) and each sampling seed, the analysis (ensemble mean of `members`) is
scored against the truth: normalised MSE/MAE over all channels, WRMSE of z500,
t850, u500, v500 and the lowest-level u/v, the 48-h forecast from the analysis
(normalised MSE, z500 WRMSE) and the Geo-Score (x100, against the truth's own
imbalance). Reference rows: the background and 3D-Var (deterministic).
Results: mean over cases, then mean and std over seeds.
"""

from __future__ import annotations


import numpy as np
import torch

from align_da_ops import grid
from align_da_ops.align.rewards import DEFAULT_VARIABLES, geo_score, geostrophic_imbalance, resolve_variables, wrmse_per_variable
from align_da_ops.obs.config import ObservationsConfig, RandomMaskNetwork
from align_da_ops.obs.networks import Truth, simulate
from align_da_ops.obs.operators import GridInterpolator
from align_da_ops.verify import normalized_mae, normalized_mse

COLUMNS = ("mse", "mae", "z500", "t850", "u500", "v500", "u_low", "v_low", "fc48_mse", "fc48_z500", "geo")


def cases(states, layout, forecast_model, start, end, every_hours: int, lead_hours: int, forecast_hours: int = 48):
    """(time, background, truth, truth 48 h later, observations) for the held-out period."""
    networks = ObservationsConfig(networks=[RandomMaskNetwork(fraction=0.01, noise=False)])
    times = states[grid.TIME].sel({grid.TIME: slice(start, end)}).values
    available = set(states[grid.TIME].values.tolist())
    out = []
    for t in times[:: max(1, every_hours // 6)]:
        lead, later = np.timedelta64(lead_hours, "h"), np.timedelta64(forecast_hours, "h")
        if (t - lead).tolist() not in available or (t + later).tolist() not in available:
            continue
        x_b = layout.to_tensor(states.sel({grid.TIME: t - lead}).load())[0]
        with torch.no_grad():
            for _ in range(lead_hours // 6):
                x_b = forecast_model.step(x_b)
        window = states.sel({grid.TIME: slice(t - np.timedelta64(6, "h"), t + np.timedelta64(6, "h"))}).load()
        obs = simulate(networks, Truth.from_dataset(window), t.astype("datetime64[s]"), "bench-alignment").batch
        out.append((t, x_b, layout.to_tensor(states.sel({grid.TIME: t}).load())[0],
                    layout.to_tensor(states.sel({grid.TIME: t + later}).load())[0], obs))
    return out


def scores(analysis, truth, truth_later, forecast_model, layout, norm, lat, lon, forecast_hours: int = 48) -> dict:
    variables = resolve_variables(DEFAULT_VARIABLES, layout)
    w = wrmse_per_variable(analysis, truth, layout, lat, variables).tolist()
    with torch.no_grad():
        fc = analysis
        for _ in range(forecast_hours // 6):
            fc = forecast_model.step(fc)
    z500 = resolve_variables((("geopotential", 500),), layout)
    d = geostrophic_imbalance(analysis, layout, lat, lon)
    d_truth = geostrophic_imbalance(truth, layout, lat, lon)
    return {
        "mse": float(normalized_mse(analysis, truth, norm, lat)), "mae": float(normalized_mae(analysis, truth, norm, lat)),
        "z500": w[0], "t850": w[1], "u500": w[2], "v500": w[3], "u_low": w[4], "v_low": w[5],
        "fc48_mse": float(normalized_mse(fc, truth_later, norm, lat)),
        "fc48_z500": float(wrmse_per_variable(fc, truth_later, layout, lat, z500)[0]),
        "geo": 100 * float(geo_score(d, d_truth)),
    }


def evaluate(method_factory, the_cases, seeds, forecast_model, layout, norm, lat, lon, interpolator: GridInterpolator,
             members: int = 1, on_case=None) -> dict[str, tuple[float, float]]:
    """{column: (mean over seeds of the case mean, std over seeds)} for one analysis method."""
    per_seed = []
    for seed in seeds:
        method = method_factory()
        rows = []
        for i, (t, x_b, truth, later, obs) in enumerate(the_cases):
            stamp = int(t.astype("datetime64[h]").astype(np.int64))
            gens = [torch.Generator().manual_seed(seed * 7919 + stamp * 31 + m) for m in range(members)]
            result = method.analyse(x_b, obs, interpolator.prepare(obs), gens)
            rows.append(scores(result.analysis, truth, later, forecast_model, layout, norm, lat, lon))
            if on_case:
                on_case()
        per_seed.append({k: float(np.mean([r[k] for r in rows])) for k in COLUMNS})
    return {k: (float(np.mean([s[k] for s in per_seed])), float(np.std([s[k] for s in per_seed]))) for k in COLUMNS}
