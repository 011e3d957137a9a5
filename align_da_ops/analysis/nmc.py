"""NMC background-error statistics from the campaign's own forecast model (Parrish & Derber 1992).

Proxies: forecasts from the training-split states valid at the same time from
two leads (default 48 h and 24 h), their difference per valid time; the
spectral B is estimated from them (`covariance.estimate_nmc`). All forecasts
of one lead run as one batch through `ForecastModel.step`.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import torch
import xarray as xr

from align_da_ops import grid
from align_da_ops.analysis.covariance import SpectralCovariance, estimate_nmc, forecast_differences
from align_da_ops.errors import SchemaError
from align_da_ops.forecast.base import ForecastModel, rollout


def nmc_valid_times(states: xr.Dataset, start, end, long_hours: int, samples: int) -> list[np.datetime64]:
    """Up to `samples` valid times in [start + long, end], evenly spread, whose initial states exist."""
    times = states.indexes[grid.TIME]
    first = np.datetime64(start + timedelta(hours=long_hours), "ns")
    candidates = [t for t in times.values if first <= t <= np.datetime64(end, "ns")]
    if len(candidates) < 2:
        raise SchemaError(f"too few valid times for NMC in [{start}, {end}] with a {long_hours} h lead")
    pick = np.unique(np.linspace(0, len(candidates) - 1, min(samples, len(candidates))).round().astype(int))
    return [candidates[i] for i in pick]


def nmc_covariance(
    model: ForecastModel, states: xr.Dataset, layout: grid.StateLayout, valid_times, long_hours: int = 48,
    short_hours: int = 24, device: torch.device = torch.device("cpu"), couple: str = "vertical",
) -> SpectralCovariance:
    def initial(lead):
        when = [t - np.timedelta64(lead, "h") for t in valid_times]
        return layout.to_tensor(states.sel({grid.TIME: when}).load())[0].to(device)

    long = rollout(model, initial(long_hours), [long_hours])[long_hours]
    short = rollout(model, initial(short_hours), [short_hours])[short_hours]
    proxies = forecast_differences(long.cpu().double(), short.cpu().double())
    lat, lon = states[grid.LAT].values, states[grid.LON].values
    return estimate_nmc(proxies, layout.channels, lat, lon, couple=couple)
