"""`align-da bench letkf`: seconds per LETKF analysis and per member forecast against ensemble size.

One OSSE case of the experiment (the first validation cycle): the observations are a
synthetic network drawn from the truth (default the paper's 1 % random mask), the
background ensemble is the truth plus climatological perturbations of the training split.
Measured side by side in one run, best of `repeats` after a warm-up, with 3D-Var on the
same observations (parametric B) as the reference row: ratios, not absolute seconds,
are what carries across machines.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from align_da_ops import grid
from align_da_ops.timing import timed_runs


def _best_of(fn, repeats: int, device: torch.device) -> float:
    return min(timed_runs(fn, repeats, device))


def time_letkf(config: Path, members: tuple[int, ...], devices: tuple[str, ...], network: dict | None = None,
               horizontal_length_km: float = 2000.0, repeats: int = 3) -> tuple[list[dict], int]:
    """Rows {device, method, members, s_analysis, s_member_forecasts, s_cycle, ratio_to_3dvar}; and n_obs."""
    from align_da_ops.analysis.letkf import LETKF, LETKFConfig
    from align_da_ops.analysis.threedvar import ThreeDVar, ThreeDVarConfig
    from align_da_ops.config import load_config
    from align_da_ops.data.sources import layout_of, open_states
    from align_da_ops.forecast.checkpoint import load_model, shipped_checkpoint
    from align_da_ops.obs.config import ObservationsConfig
    from align_da_ops.obs.networks import Truth, simulate
    from align_da_ops.obs.operators import GridInterpolator

    cfg = load_config(config)
    layout, states = layout_of(cfg), open_states(cfg)
    lat, lon = states[grid.LAT].values, states[grid.LON].values
    when = cfg.splits.validation.start
    obs_cfg = ObservationsConfig.model_validate({"networks": [network or {"kind": "random_mask", "fraction": 0.01}]})
    around = states.sel({grid.TIME: slice(when - timedelta(hours=6), when + timedelta(hours=6))}).load()
    obs = simulate(obs_cfg, Truth.from_dataset(around), np.datetime64(when, "s"), cfg.name, 0).batch
    truth = layout.to_tensor(states.sel({grid.TIME: np.datetime64(when, "ns")}).load())[0]
    train = states.sel({grid.TIME: slice(np.datetime64(cfg.splits.train.start, "ns"), np.datetime64(cfg.splits.train.end, "ns"))})
    rng = np.random.default_rng(0)
    pool = layout.to_tensor(train.isel({grid.TIME: rng.choice(train.sizes[grid.TIME], 2 * max(members), replace=True)}).load())[0]
    rows = []
    for name in devices:
        device = torch.device(name)
        operator = GridInterpolator(layout, lat, lon).prepare(obs, device)
        background = truth.to(device)
        threedvar = ThreeDVar.from_config(ThreeDVarConfig(), layout.channels, lat, lon)
        reference = _best_of(lambda: threedvar.analyse(background, obs, operator), repeats, device)
        rows.append({"device": name, "method": "3dvar", "members": 1, "s_analysis": reference, "s_member_forecasts": 0.0})
        model = load_model(shipped_checkpoint(cfg.name), layout.channels, len(lat), len(lon), device) if cfg.name == "tiny" else None
        for k in members:
            perts = (pool[:k] - pool[k : 2 * k]) / np.sqrt(2.0)
            ensemble = (truth[None] + perts - perts.mean(0)).to(device)
            method = LETKF(LETKFConfig(members=k, horizontal_length_km=horizontal_length_km), layout.channels, layout.levels, lat, lon)
            s_analysis = _best_of(lambda: method.analyse_members(ensemble, obs, operator), repeats, device)
            s_forecast = 0.0
            if model is not None:
                with torch.no_grad():
                    s_forecast = _best_of(lambda: model.step(ensemble), repeats, device)
            rows.append({"device": name, "method": "letkf", "members": k, "s_analysis": s_analysis, "s_member_forecasts": s_forecast})
    for row in rows:
        ref = next(r["s_analysis"] for r in rows if r["device"] == row["device"] and r["method"] == "3dvar")
        row["s_cycle"] = row["s_analysis"] + row["s_member_forecasts"]
        row["ratio_to_3dvar"] = row["s_analysis"] / ref
    return rows, len(obs)
