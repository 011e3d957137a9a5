"""NMC from a forecast model: with persistence the proxies are plain state differences (methods agree)."""

from __future__ import annotations

import numpy as np

from align_da_ops.analysis.covariance import estimate_nmc
from align_da_ops.analysis.nmc import nmc_covariance, nmc_valid_times
from align_da_ops.data.sources import layout_of, open_states
from align_da_ops.forecast.base import Persistence

from factories import tiny_config


def test_nmc_with_persistence_equals_state_differences(tiny_nature_run):
    cfg = tiny_config(tiny_nature_run)
    states = open_states(cfg)
    layout = layout_of(cfg)
    times = nmc_valid_times(states, cfg.nature_run.start, cfg.nature_run.end, 12, samples=5)
    assert len(times) == 5 and times[0] == np.datetime64("2000-01-01T12:00", "ns")
    cov = nmc_covariance(Persistence(), states, layout, times, long_hours=12, short_hours=6)
    x = lambda lead: layout.to_tensor(states.sel(time=[t - np.timedelta64(lead, "h") for t in times]).load())[0]
    direct = estimate_nmc((x(12) - x(6)).double(), layout.channels, states.latitude.values, states.longitude.values)
    # the model path subtracts in float64, the direct one in float32: equal to float32 round-off
    np.testing.assert_allclose(cov.variances(), direct.variances(), rtol=1e-6)
    np.testing.assert_allclose(cov.length_scales(), direct.length_scales(), rtol=1e-6)
    assert np.all(cov.variances() > 0)
